"""Signals other apps may listen to, so hitl's core needs no import of them."""

from django.dispatch import Signal

# Sent (inside the selecting transaction) when a review batch has its tasks: project_id, batch_id.
review_batch_selected = Signal()
