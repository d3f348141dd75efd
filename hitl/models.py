"""hitl's domain: projects, model versions, deployments, items, predictions, labels, review
batches, retraining cycles, evaluation snapshots and the trust history."""

from __future__ import annotations

import numpy as np
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from hitl.media import validate_storage_prefix
from hitl.mlspec import DEFAULT_STRATEGY


class TaskType(models.TextChoices):
    CLASSIFICATION = "classification", "Classification"
    DETECTION = "detection", "Detection"


class Project(models.Model):
    """A vision task with its ordered label set and its active-learning settings."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    task_type = models.CharField(max_length=20, choices=TaskType.choices, default=TaskType.CLASSIFICATION)
    labels = models.JSONField(help_text="Ordered class names; a model's outputs follow this order.")
    architecture = models.CharField(max_length=64, default="small_cnn")
    initial_weights = models.CharField(
        max_length=500, blank=True, help_text="Local weights file the first model starts from."
    )
    holdout_fraction = models.FloatField(default=0.2)
    selection_strategy = models.CharField(max_length=32, default=DEFAULT_STRATEGY)
    batch_size = models.PositiveIntegerField(default=100)
    audit_fraction = models.FloatField(default=0.1)
    double_label_fraction = models.FloatField(
        default=0.0, help_text="Share of review tasks two reviewers label blind (golden-set items always); "
                               "when they disagree, a third person decides (hitl.services.agreement).")
    mc_samples = models.PositiveIntegerField(default=20, help_text="MC-dropout passes for BALD.")
    committee_size = models.PositiveIntegerField(default=3, help_text="Model versions in a committee.")
    class_balance = models.BooleanField(
        default=False, help_text="Spread score-based picks over the predicted classes."
    )
    selection_pool_limit = models.PositiveIntegerField(
        default=50_000, help_text="Strategies that run the model consider at most this many random pool items."
    )
    train_config = models.JSONField(default=dict, blank=True)
    gate_rules = models.JSONField(
        default=dict, blank=True,
        help_text="The promotion gate's rules (hitl.mlspec.GATE_RULES); unset ones take their defaults.",
    )
    monitoring = models.JSONField(
        default=dict, blank=True,
        help_text="Monitoring thresholds, action and notifications (hitl.monitorspec.MONITORING_RULES); "
                  "unset ones take their defaults.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.slug

    @property
    def label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


class ModelStage(models.TextChoices):
    CANDIDATE = "candidate", "Candidate"
    PRODUCTION = "production", "Production"
    ARCHIVED = "archived", "Archived"


class ModelVersion(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions")
    name = models.CharField(max_length=64)
    architecture = models.CharField(max_length=64)
    labels = models.JSONField(help_text="Class names in the order of this model's outputs.")
    stage = models.CharField(max_length=20, choices=ModelStage.choices, default=ModelStage.CANDIDATE)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    training_labels = models.ManyToManyField("Label", blank=True, related_name="trained_models")
    created_at = models.DateTimeField(default=timezone.now)
    promoted_at = models.DateTimeField(null=True, blank=True)
    promoted_by = models.CharField(max_length=200, blank=True)
    temperature = models.FloatField(
        default=1.0, help_text="Divides the logits before the softmax (temperature scaling, fitted on held-out "
                               "human labels the model was not trained on); 1.0 = not calibrated.")
    calibration = models.JSONField(
        default=dict, blank=True, help_text="How the temperature was fitted: labels used, NLL, ECE and reliability "
                                            "bins before and after, or why it was not (too few labels).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="model_version_unique_name"),
            models.CheckConstraint(condition=Q(temperature__gt=0), name="model_temperature_positive"),
            models.UniqueConstraint(
                fields=["project"], condition=Q(stage="production"), name="one_production_model"
            ),
        ]
        ordering = ["project_id", "created_at", "id"]

    def __str__(self) -> str:
        return f"{self.project.slug}:{self.name}"


class ArtifactKind(models.TextChoices):
    WEIGHTS = "weights", "safetensors weights"
    ONNX = "onnx", "ONNX graph"


class ModelArtifact(models.Model):
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(max_length=20, choices=ArtifactKind.choices)
    path = models.CharField(max_length=500, help_text="Relative to MEDIA_ROOT.")
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_version", "kind"], name="one_artifact_per_kind")
        ]


class Environment(models.TextChoices):
    CLOUD = "cloud", "Cloud"
    ON_PREM = "on_prem", "On-prem"
    MOBILE = "mobile", "Mobile"
    EDGE = "edge", "Edge"


class Deployment(models.Model):
    """Where a model serves. Its API token is stored only as a sha256 digest."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=100)
    environment = models.CharField(max_length=20, choices=Environment.choices)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    follows_production = models.BooleanField(
        default=True, help_text="Switch to each newly promoted production model."
    )
    token_digest = models.CharField(max_length=64, unique=True)
    token_prefix = models.CharField(max_length=12)
    storage_prefix = models.CharField(
        max_length=300, validators=[validate_storage_prefix],
        help_text="Folder under the storage root that this deployment's image_path values must lie in "
        "(default <project-slug>/<deployment-name>).",
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="deployment_unique_name")]

    def __str__(self) -> str:
        return f"{self.project.slug}:{self.name}"

    # DRF's IsAuthenticated asks the authenticated principal this.
    is_authenticated = True


class Split(models.TextChoices):
    TRAIN = "train", "Train"
    HOLDOUT = "holdout", "Held out"


class Item(models.Model):
    """An image, keyed by its content sha256 within a project: the same image sent twice is one item."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    sha256 = models.CharField(max_length=64)
    image = models.CharField(max_length=500, help_text="Path relative to MEDIA_ROOT.")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveIntegerField()
    format = models.CharField(max_length=10)
    split = models.CharField(max_length=10, choices=Split.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "sha256"], name="item_unique_content")]

    def __str__(self) -> str:
        return f"item {self.pk} ({self.sha256[:12]})"


class Prediction(models.Model):
    """A model version's class probabilities for an item: one per item and model version."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="predictions")
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="predictions",
        help_text="Empty when hitl itself ran the model.",
    )
    probabilities = models.BinaryField(help_text="float32 little-endian, in the model's label order.")
    predicted_label = models.CharField(max_length=200)
    confidence = models.FloatField()
    received_at = models.DateTimeField(default=timezone.now)
    scored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "model_version"], name="one_prediction_per_version")
        ]
        indexes = [
            models.Index(fields=["model_version"], condition=Q(scored_at__isnull=True), name="prediction_unscored"),
            # the monitor reads one deployment's predictions of one time window
            models.Index(fields=["deployment", "received_at"], name="prediction_deployment_time"),
        ]

    @property
    def probability_array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.probabilities), dtype="<f4")


class UncertaintyScore(models.Model):
    """How uncertain a prediction is by one method; higher means more uncertain."""

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="scores")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    method = models.CharField(max_length=32)
    value = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prediction", "method"], name="one_score_per_method")
        ]
        indexes = [models.Index(fields=["model_version", "method", "-value"], name="score_rank")]


class LabelSource(models.TextChoices):
    WEB = "web", "hitl web UI"
    LABEL_STUDIO = "label_studio", "Label Studio"
    API = "api", "REST API"
    IMPORT = "import", "Import"
    SIMULATED = "simulated", "Simulated reviewer (dataset ground truth)"


class LabelStatus(models.TextChoices):
    CURRENT = "current", "Current"
    SUPERSEDED = "superseded", "Superseded by a correction"
    RETRACTED = "retracted", "Retracted"


class Label(models.Model):
    """A human's label for an item. Corrections add a row and supersede the old one."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="labels")
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="+", db_index=False,  # label_project_reviewer leads with it
        help_text="The item's project, kept on the label so per-project counts read labels alone.",
    )
    value = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=LabelStatus.choices, default=LabelStatus.CURRENT)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="labels"
    )
    reviewer_name = models.CharField(max_length=200, help_text="Kept even if the user is removed.")
    source = models.CharField(max_length=20, choices=LabelSource.choices)
    previous = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="next"
    )
    review_task = models.ForeignKey(
        "ReviewTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="labels"
    )
    prediction = models.ForeignKey(
        Prediction, null=True, blank=True, on_delete=models.SET_NULL, related_name="labels",
        help_text="The pre-annotation the reviewer started from.",
    )
    model_value = models.CharField(
        max_length=200, blank=True,
        help_text="The model's label in that pre-annotation (blank: none was shown), copied when the "
                  "label is written so agreement with the model needs no join to predictions.",
    )
    lead_time_seconds = models.FloatField(null=True, blank=True)
    external_id = models.CharField(max_length=200, blank=True, help_text="E.g. a Label Studio annotation id.")
    created_at = models.DateTimeField(default=timezone.now)
    retracted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item"], condition=Q(status="current"), name="one_current_label")
        ]
        indexes = [
            models.Index(fields=["source", "external_id"], name="label_external"),
            models.Index(fields=["project", "reviewer_name"], name="label_project_reviewer"),
        ]

    def __str__(self) -> str:
        return f"{self.value} for item {self.item_id} ({self.status})"


class ReviewBatchStatus(models.TextChoices):
    PENDING = "pending", "Pending selection"
    SELECTED = "selected", "Selected"
    FAILED = "failed", "Failed"


class ReviewBatch(models.Model):
    """A set of items selected for human review, and how they were selected."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="review_batches")
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="review_batches",
        help_text="Whose predictions were scored; set when the batch is selected.",
    )
    strategy = models.CharField(max_length=32)
    size = models.PositiveIntegerField()
    audit_fraction = models.FloatField()
    audit_pool_size = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Predictions of the audited version open to the audit draw when it was made: the "
                  "weight of this batch's audit slice in the live-accuracy estimate.",
    )
    seed = models.BigIntegerField()
    status = models.CharField(max_length=20, choices=ReviewBatchStatus.choices, default=ReviewBatchStatus.PENDING)
    error = models.TextField(blank=True)
    requested_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    selected_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class ReviewReason(models.TextChoices):
    STRATEGY = "strategy", "Selected by the query strategy"
    AUDIT = "audit", "Random audit slice"
    GOLDEN = "golden", "Random draw for the golden set"


class ReviewTaskStatus(models.TextChoices):
    OPEN = "open", "Open"
    DONE = "done", "Done"
    SKIPPED = "skipped", "Skipped"
    CANCELLED = "cancelled", "Cancelled"
    CONFLICT = "conflict", "Reviewers disagree: a third person decides"


class ReviewTask(models.Model):
    batch = models.ForeignKey(ReviewBatch, on_delete=models.CASCADE, related_name="tasks")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="review_tasks")
    prediction = models.ForeignKey(Prediction, null=True, on_delete=models.SET_NULL, related_name="review_tasks")
    reason = models.CharField(max_length=20, choices=ReviewReason.choices)
    strategy = models.CharField(max_length=32)
    score = models.FloatField(null=True, blank=True)
    rank = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=ReviewTaskStatus.choices, default=ReviewTaskStatus.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)
    # A short lease (hitl.services.leases): the reviewer who has the open task in front of them.
    leased_to = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The reviewer holding the lease; free once lease_expires_at has passed.",
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "item"], name="review_task_unique_item"),
            models.UniqueConstraint(fields=["item"], condition=Q(status="open"), name="one_open_review_per_item"),
        ]
        ordering = ["batch_id", "rank"]


class CycleStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    TRAINING = "training", "Training"
    EVALUATING = "evaluating", "Evaluating"
    AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class CycleDecision(models.TextChoices):
    NONE = "", "No decision yet"
    PROMOTED = "promoted", "Promoted"
    REJECTED = "rejected", "Rejected"
    AWAITING_APPROVAL = "awaiting_approval", "Passed the gate, awaiting a person's approval"


class RetrainingCycle(models.Model):
    """Train a candidate from the production model, evaluate both, decide. A state machine."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="cycles")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=CycleStatus.choices, default=CycleStatus.PENDING)
    base_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The production model the candidate starts from (empty: from scratch).",
    )
    candidate_version = models.OneToOneField(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_by_cycle"
    )
    train_config = models.JSONField(default=dict)
    progress = models.JSONField(default=dict, blank=True)
    decision = models.CharField(max_length=20, choices=CycleDecision.choices, default=CycleDecision.NONE, blank=True)
    decision_reason = models.TextField(blank=True)
    gate = models.JSONField(
        default=dict, blank=True,
        help_text="The gate's verdict: every rule's inputs and result, the golden-set version, the rules.",
    )
    decided_by = models.CharField(max_length=200, blank=True, help_text="Who approved or rejected.")
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    requested_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life of its worker.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="cycle_unique_number")]
        ordering = ["-project_id", "-number"]

    def __str__(self) -> str:
        return f"{self.project.slug} cycle {self.number}"

    @property
    def is_finished(self) -> bool:
        return self.status in {CycleStatus.SUCCEEDED, CycleStatus.FAILED, CycleStatus.CANCELLED}


class EvaluationSet(models.TextChoices):
    GOLDEN = "golden", "Golden set (random draws, never trained on)"
    HARD_CASES = "hard_cases", "Hard cases (held-out items a strategy picked: biased)"


class EvaluationSnapshot(models.Model):
    """A model's metrics on an exact, recorded set of held-out human labels."""

    cycle = models.ForeignKey(RetrainingCycle, on_delete=models.CASCADE, related_name="snapshots")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="snapshots")
    role = models.CharField(max_length=20, help_text="candidate or production")
    eval_set = models.CharField(max_length=20, choices=EvaluationSet.choices, default=EvaluationSet.HARD_CASES)
    golden_set = models.ForeignKey(
        "GoldenSet", null=True, blank=True, on_delete=models.PROTECT, related_name="snapshots",
        help_text="The golden-set version evaluated on (golden snapshots).",
    )
    intervals = models.JSONField(
        default=dict, blank=True,
        help_text="Bootstrap intervals: accuracy, macro_f1, per_class_recall; paired comparison for a candidate.",
    )
    label_ids = models.JSONField(help_text="Sorted ids of the labels evaluated on.")
    eval_set_sha256 = models.CharField(max_length=64)
    n_items = models.PositiveIntegerField()
    accuracy = models.FloatField()
    metrics = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cycle", "model_version", "eval_set"], name="one_snapshot_per_cycle_model_set")
        ]


class TrustEvent(models.Model):
    """An append-only, hash-chained, signed record: which labels trained which model, how it
    scored, who or what promoted it. Editing, deleting or reordering rows breaks the chain, a
    recomputed chain has no valid signatures, and cutting off the newest rows shows against the
    head file kept outside the database (see hitl.services.trust)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="trust_events")
    sequence = models.PositiveIntegerField()
    kind = models.CharField(max_length=40)
    actor = models.CharField(max_length=200)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    previous_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    key_id = models.CharField(max_length=16, blank=True, help_text="Which trust key signed the hash.")
    signature = models.CharField(max_length=100, blank=True, help_text="Ed25519 signature of the hash, base64.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "sequence"], name="trust_chain_sequence")]
        ordering = ["project_id", "sequence"]


class TrustVerification(models.Model):
    """The newest verification of a project's whole trust chain (every event's link, hash and
    signature, and the external head), so that pages verify only the events written after it.
    Beat repeats it (``HITL_TRUST_FULL_CHECK_SECONDS``); an edit to an older event shows there."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="trust_verification")
    events = models.PositiveIntegerField(help_text="Events verified: the chain through this sequence.")
    head_hash = models.CharField(max_length=64, help_text="The hash of the last event verified.")
    ok = models.BooleanField()
    first_bad_sequence = models.PositiveIntegerField(null=True, blank=True)
    cause = models.CharField(max_length=20, blank=True)
    problem = models.TextField(blank=True)
    verified_at = models.DateTimeField(help_text="When the verified events were read.")
    key_id = models.CharField(max_length=16, help_text="Which trust key signed this record.")
    signature = models.CharField(max_length=100, help_text="Ed25519 signature of the record's fields, base64.")


class ProjectRole(models.TextChoices):
    """A member's role in one project, lowest first: each role may do what those before it may."""

    VIEWER = "viewer", "Viewer"
    REVIEWER = "reviewer", "Reviewer"
    ML_ENGINEER = "ml_engineer", "ML engineer"
    ADMIN = "admin", "Project admin"


class ProjectMembership(models.Model):
    """Who may see a project and what they may do in it (see hitl/services/access.py)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="project_memberships"
    )
    role = models.CharField(max_length=20, choices=ProjectRole.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user"),
            models.CheckConstraint(
                condition=Q(role__in=ProjectRole.values), name="membership_known_role"
            ),
        ]
        ordering = ["project_id", "user_id"]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"


class GoldenItem(models.Model):
    """An item reserved for the golden set: a uniform random draw, labeled by people, never
    trained on. Reserved when proposed for review (or taken from an audit slice)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="golden_items")
    item = models.OneToOneField(Item, on_delete=models.CASCADE, related_name="golden")
    source = models.CharField(max_length=20, help_text="golden (a golden review batch) or audit")
    review_batch = models.ForeignKey(ReviewBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    reserved_at = models.DateTimeField(default=timezone.now)


class GoldenSet(models.Model):
    """A frozen version of a project's golden set: exactly these items, never changed. A new
    version only by an explicit, recorded action (hitl.services.golden.golden_set_freeze)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="golden_sets")
    version = models.PositiveIntegerField()
    item_ids = models.JSONField(help_text="Sorted ids of the member items.")
    items_sha256 = models.CharField(max_length=64, help_text="Digest of the members' content sha256s.")
    created_by = models.CharField(max_length=200)
    reason = models.TextField()
    frozen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "version"], name="golden_set_unique_version")]
        ordering = ["project_id", "-version"]

    def __str__(self) -> str:
        return f"{self.project.slug} golden set v{self.version}"


class ReviewAnswer(models.Model):
    """One reviewer's blind answer to a review task that two reviewers label (see
    hitl.services.agreement). Agreeing answers make the label; disagreeing ones a conflict."""

    task = models.ForeignKey(ReviewTask, on_delete=models.CASCADE, related_name="answers")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    reviewer_name = models.CharField(max_length=200)
    value = models.CharField(max_length=200)
    lead_time_seconds = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "reviewer"], name="one_answer_per_reviewer")]
        ordering = ["task_id", "created_at", "id"]


class MonitoringReference(models.Model):
    """What a deployed model version's predictions looked like when it started serving: recorded
    once, on the first monitoring run that finds enough of its predictions (its earliest ones, by
    arrival: hitl's own run over the pool at promotion, then its deployments' first reports), and
    never recomputed, so every later window is compared with the same numbers."""

    model_version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="monitoring_reference")
    n_predictions = models.PositiveIntegerField()
    class_counts = models.JSONField(help_text="Predictions per class, in the model's label order.")
    confidence_counts = models.JSONField(help_text="Predictions per equal-width confidence bin of [0, 1].")
    confidence_sample = models.JSONField(help_text="Sorted confidences (evenly spaced quantiles) for the KS test.")
    first_received_at = models.DateTimeField()
    last_received_at = models.DateTimeField()
    recorded_at = models.DateTimeField(default=timezone.now)


class MonitorWindow(models.Model):
    """One time window, measured once (a repeated run finds the row and measures nothing again).
    With a deployment: its prediction volume and drift against its model's reference. Without
    (one row per model version): live accuracy from the audit slice and reviewer agreement,
    which humans label per item, not per deployment."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="monitor_windows")
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.CASCADE, related_name="monitor_windows"
    )
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="monitor_windows")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    n_predictions = models.PositiveIntegerField()
    metrics = models.JSONField(help_text="PSI, KS, live accuracy and agreement with their inputs (null: not judged).")
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "window_start"], name="one_monitor_window_per_deployment"),
            models.UniqueConstraint(fields=["model_version", "window_start"], condition=Q(deployment__isnull=True),
                                    name="one_monitor_window_per_version"),
        ]
        ordering = ["project_id", "-window_start", "deployment_id"]


class AlertMetric(models.TextChoices):
    PREDICTION_VOLUME = "prediction_volume", "Prediction volume"
    CLASS_PSI = "class_psi", "Predicted-class mix drift (PSI)"
    CONFIDENCE_PSI = "confidence_psi", "Confidence drift (PSI)"
    CONFIDENCE_KS = "confidence_ks", "Confidence drift (KS statistic)"
    LIVE_ACCURACY = "live_accuracy", "Live accuracy (audit slice, upper 95% bound)"
    REVIEWER_AGREEMENT = "reviewer_agreement", "Reviewer-model agreement"


class AlertStatus(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"


class AlertAction(models.TextChoices):
    NONE = "none", "None"
    REVIEW_BATCH = "review_batch", "Schedule a review batch"
    RETRAINING_CYCLE = "retraining_cycle", "Start a retraining cycle"


class Alert(models.Model):
    """A monitored metric crossed its project's threshold in one window: shown until a person
    acknowledges it. At most one per window row and metric (a deployment's, or a model version's
    for live accuracy and reviewer agreement)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="alerts")
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="alerts")
    window = models.ForeignKey(MonitorWindow, on_delete=models.CASCADE, related_name="alerts")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    metric = models.CharField(max_length=30, choices=AlertMetric.choices)
    value = models.FloatField()
    threshold = models.FloatField()
    message = models.TextField()
    status = models.CharField(max_length=20, choices=AlertStatus.choices, default=AlertStatus.OPEN)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_by_name = models.CharField(max_length=200, blank=True, help_text="Kept if the user is removed.")
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledge_note = models.TextField(blank=True)
    action = models.CharField(max_length=20, choices=AlertAction.choices, default=AlertAction.NONE)
    action_detail = models.TextField(blank=True, help_text="What the action did, or why it did nothing.")
    review_batch = models.ForeignKey(ReviewBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    cycle = models.ForeignKey(RetrainingCycle, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_error = models.TextField(blank=True, help_text="The last delivery's failure, if any.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["window", "metric"], name="one_alert_per_window_metric"),
            models.CheckConstraint(
                condition=Q(status="open") | Q(acknowledged_at__isnull=False), name="acknowledged_alert_has_time"
            ),
        ]
        indexes = [models.Index(fields=["project", "status", "-created_at"], name="alert_project_status")]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        where = self.deployment.name if self.deployment_id else self.model_version.name
        return f"{self.project.slug}:{where} {self.metric} {self.window_start:%Y-%m-%d %H:%M}"
