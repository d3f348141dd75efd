"""Celery tasks that talk to Label Studio (see labeling.services)."""
