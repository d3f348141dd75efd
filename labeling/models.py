"""What hitl remembers about Label Studio: the project link, pushed tasks, every annotation
seen (keyed by Label Studio's annotation id) and every webhook event received."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from hitl.models import Label, Project, ReviewTask


class LabelStudioProject(models.Model):
    """The link between a hitl project and its Label Studio project. Its webhook posts to a URL
    naming this row, with a secret of its own; hitl keeps only the secret's SHA-256 (Label Studio
    holds the value and sends it as a header). After a rotation the previous secret stays valid
    until ``previous_secret_valid_until``."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="label_studio")
    ls_project_id = models.PositiveIntegerField(null=True, blank=True)
    label_config_sha256 = models.CharField(max_length=64, blank=True)
    webhook_id = models.PositiveIntegerField(null=True, blank=True)
    webhook_secret_sha256 = models.CharField(max_length=64, blank=True, help_text="Empty: no webhook accepted.")
    previous_secret_sha256 = models.CharField(max_length=64, blank=True)
    previous_secret_valid_until = models.DateTimeField(null=True, blank=True)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)
    provisioned_at = models.DateTimeField(null=True, blank=True)
    last_push_at = models.DateTimeField(null=True, blank=True)
    last_sync_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.project.slug} -> Label Studio project {self.ls_project_id}"


class PushState(models.TextChoices):
    RESERVED = "reserved", "Being pushed"
    PUSHED = "pushed", "In Label Studio"
    MISSING = "missing", "Deleted in Label Studio"


class LabelStudioTask(models.Model):
    """A review task pushed to Label Studio. Rows are reserved before the import and confirmed
    after it, so an import interrupted half-way is found and finished, never duplicated."""

    ls_project = models.ForeignKey(LabelStudioProject, on_delete=models.CASCADE, related_name="tasks")
    review_task = models.OneToOneField(ReviewTask, on_delete=models.CASCADE, related_name="label_studio_task")
    ls_task_id = models.PositiveIntegerField(null=True, blank=True, unique=True)
    state = models.CharField(max_length=20, choices=PushState.choices, default=PushState.RESERVED)
    model_version = models.CharField(max_length=64, blank=True, help_text="Of the pre-annotation pushed.")
    reserved_at = models.DateTimeField(default=timezone.now)
    pushed_at = models.DateTimeField(null=True, blank=True)


class AnnotationState(models.TextChoices):
    APPLIED = "applied", "Applied as a hitl label"
    CANCELLED = "cancelled", "Task skipped in Label Studio"
    REJECTED = "rejected", "Rejected (see reason)"
    DELETED = "deleted", "Deleted in Label Studio"


class LabelStudioAnnotation(models.Model):
    """Every Label Studio annotation hitl has seen. Its id makes replays and out-of-order
    events harmless: an event older than what is stored changes nothing."""

    ls_annotation_id = models.PositiveIntegerField(unique=True)
    ls_task_id = models.PositiveIntegerField()
    ls_project = models.ForeignKey(LabelStudioProject, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="annotations")
    task = models.ForeignKey(LabelStudioTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="annotations")
    label = models.ForeignKey(Label, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    state = models.CharField(max_length=20, choices=AnnotationState.choices)
    reason = models.TextField(blank=True)
    result = models.JSONField(default=list, blank=True)
    completed_by = models.CharField(max_length=200, blank=True)
    lead_time_seconds = models.FloatField(null=True, blank=True)
    ls_prediction_id = models.PositiveIntegerField(null=True, blank=True, help_text="Pre-annotation it started from.")
    ls_updated_at = models.DateTimeField(null=True, blank=True)
    seen_via = models.CharField(max_length=20, help_text="webhook or reconcile")
    updated_at = models.DateTimeField(default=timezone.now)


class EventState(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSED = "processed", "Processed"
    FAILED = "failed", "Failed"


class WebhookEvent(models.Model):
    """An authenticated event, stored before a worker applies it."""

    link = models.ForeignKey(LabelStudioProject, null=True, blank=True, on_delete=models.CASCADE,
                             related_name="events", help_text="The project link whose webhook URL it came to.")
    received_at = models.DateTimeField(default=timezone.now)
    ls_project_id = models.PositiveIntegerField(null=True, blank=True)
    action = models.CharField(max_length=40)
    payload = models.JSONField()
    state = models.CharField(max_length=20, choices=EventState.choices, default=EventState.PENDING)
    processed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = (models.Index(fields=["state", "received_at"], name="webhook_event_state"),)


class RejectionSource(models.TextChoices):
    WEBHOOK = "webhook", "Webhook call"
    RECONCILE = "reconcile", "Reconcile"


class LabelStudioRejection(models.Model):
    """A refused webhook call (no or a wrong secret, a malformed or cross-project event) or an
    annotation reconcile would not apply because it belongs to another project. Repeats of the
    same refusal count up on one row, so a flood of forged calls cannot fill the database."""

    link = models.ForeignKey(LabelStudioProject, on_delete=models.CASCADE, related_name="rejections")
    source = models.CharField(max_length=20, choices=RejectionSource.choices)
    reason = models.CharField(max_length=500)
    count = models.PositiveIntegerField(default=1)
    first_at = models.DateTimeField(default=timezone.now)
    last_at = models.DateTimeField(default=timezone.now)
    last_remote = models.CharField(max_length=64, blank=True, help_text="Client address of the last webhook call.")

    class Meta:
        constraints = (models.UniqueConstraint(fields=["link", "source", "reason"], name="one_row_per_rejection"),)
