"""API shapes. Input serializers check types; services check meaning."""

from __future__ import annotations

from rest_framework import serializers

from hitl.models import (
    Deployment,
    EvaluationSnapshot,
    Item,
    Label,
    ModelArtifact,
    ModelVersion,
    Prediction,
    Project,
    ProjectMembership,
    ProjectRole,
    RetrainingCycle,
    ReviewBatch,
    ReviewTask,
    TrustEvent,
)
from hitl.monitorspec import monitoring_rules_shown


class ProjectSerializer(serializers.ModelSerializer):
    def to_representation(self, instance: Project) -> dict:
        data = super().to_representation(instance)
        data["monitoring"] = monitoring_rules_shown(data["monitoring"])  # a webhook URL may hold a secret
        return data

    class Meta:
        model = Project
        fields = ["slug", "name", "task_type", "labels", "architecture", "initial_weights", "holdout_fraction",
                  "selection_strategy", "batch_size", "audit_fraction", "mc_samples", "committee_size",
                  "class_balance", "selection_pool_limit", "train_config", "gate_rules",
                  "double_label_fraction", "monitoring", "created_at"]


class ArtifactSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelArtifact
        fields = ["kind", "path", "sha256", "size_bytes"]


class ModelVersionSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    artifacts = ArtifactSerializer(many=True, read_only=True)
    training_label_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "architecture", "labels", "stage", "parent", "artifacts",
                  "training_label_count", "created_at", "promoted_at", "promoted_by",
                  "temperature", "calibration"]
        read_only_fields = ["temperature", "calibration"]


class DeploymentSerializer(serializers.ModelSerializer):
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Deployment
        fields = ["id", "name", "environment", "model_version", "follows_production", "token_prefix",
                  "storage_prefix", "created_at", "last_seen_at"]


class ItemSerializer(serializers.ModelSerializer):
    is_labeled = serializers.BooleanField(read_only=True)

    class Meta:
        model = Item
        fields = ["id", "sha256", "width", "height", "size_bytes", "format", "split", "is_labeled", "created_at"]


class PredictionSerializer(serializers.ModelSerializer):
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)
    deployment = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    probabilities = serializers.SerializerMethodField()

    class Meta:
        model = Prediction
        fields = ["id", "item", "model_version", "deployment", "probabilities", "predicted_label",
                  "confidence", "received_at", "scored_at"]

    def get_probabilities(self, prediction: Prediction) -> list[float]:
        return [round(float(p), 6) for p in prediction.probability_array]


class ReviewTaskSerializer(serializers.ModelSerializer):
    # None when the task's prediction is gone (SET_NULL)
    predicted_label = serializers.CharField(source="prediction.predicted_label", default=None,
                                            allow_null=True, read_only=True)
    confidence = serializers.FloatField(source="prediction.confidence", default=None,
                                        allow_null=True, read_only=True)
    image_url = serializers.SerializerMethodField()

    class Meta:
        model = ReviewTask
        fields = ["id", "batch", "item", "image_url", "reason", "strategy", "score", "rank", "status",
                  "predicted_label", "confidence", "created_at", "completed_at"]

    def get_image_url(self, task: ReviewTask) -> str:
        return f"/api/v1/items/{task.item_id}/image"


class ReviewBatchSerializer(serializers.ModelSerializer):
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    tasks = serializers.IntegerField(source="tasks.count", read_only=True)

    class Meta:
        model = ReviewBatch
        fields = ["id", "strategy", "size", "audit_fraction", "seed", "status", "error", "model_version",
                  "tasks", "requested_by", "created_at", "selected_at"]


class ReviewBatchRequestSerializer(serializers.Serializer):
    size = serializers.IntegerField(required=False, min_value=1, max_value=10_000)
    strategy = serializers.CharField(required=False)
    audit_fraction = serializers.FloatField(required=False, min_value=0, max_value=1)
    seed = serializers.IntegerField(required=False, min_value=0, max_value=2**62)


class LabelSerializer(serializers.ModelSerializer):
    class Meta:
        model = Label
        fields = ["id", "item", "value", "status", "reviewer_name", "source", "previous", "review_task",
                  "prediction", "lead_time_seconds", "external_id", "created_at", "retracted_at"]


class LabelSubmitSerializer(serializers.Serializer):
    value = serializers.CharField()
    review_task = serializers.IntegerField(required=False)
    lead_time_seconds = serializers.FloatField(required=False, min_value=0)


class SnapshotSerializer(serializers.ModelSerializer):
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = EvaluationSnapshot
        fields = ["id", "model_version", "role", "eval_set", "golden_set_version", "n_items", "accuracy",
                  "intervals", "eval_set_sha256", "label_ids", "metrics", "created_at"]

    golden_set_version = serializers.IntegerField(source="golden_set.version", read_only=True, default=None)


class CycleSerializer(serializers.ModelSerializer):
    base_version = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    candidate_version = serializers.SlugRelatedField(slug_field="name", read_only=True,
                                                     allow_null=True)
    snapshots = SnapshotSerializer(many=True, read_only=True)

    class Meta:
        model = RetrainingCycle
        fields = ["id", "number", "status", "base_version", "candidate_version", "train_config", "progress",
                  "decision", "decision_reason", "gate", "decided_by", "error", "attempts", "requested_by",
                  "created_at", "started_at", "finished_at", "snapshots"]


class CycleRequestSerializer(serializers.Serializer):
    train_config = serializers.DictField(required=False)


class TrustEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TrustEvent
        fields = ["sequence", "kind", "actor", "payload", "created_at", "previous_hash", "hash", "key_id", "signature"]


class PredictionRecordSerializer(serializers.Serializer):
    """One prediction of a bulk (the schema; hitl.services.ingestion validates)."""

    image_path = serializers.CharField(required=False, help_text="relative to the storage root")
    image_base64 = serializers.CharField(required=False)
    image_upload = serializers.CharField(required=False, help_text="multipart file field name")
    probabilities = serializers.ListField(child=serializers.FloatField())
    predicted_label = serializers.CharField(required=False)


class IngestRequestSerializer(serializers.Serializer):
    model_version = serializers.CharField(required=False, help_text="default: the deployment's")
    predictions = PredictionRecordSerializer(many=True)


class IngestMultipartSerializer(serializers.Serializer):
    payload = serializers.CharField(help_text="the JSON bulk; files go in image_upload fields")


class PredictionConflictSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position in the bulk.")
    item_id = serializers.IntegerField()
    field = serializers.ChoiceField(choices=["probabilities", "predicted_label"])


class IngestResultSerializer(serializers.Serializer):
    model_version = serializers.CharField(source="model_version.name")
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    items_created = serializers.IntegerField()
    item_ids = serializers.ListField(child=serializers.IntegerField())
    conflicts = PredictionConflictSerializer(
        many=True, help_text="Re-sent predictions that differ from the stored one, which stands."
    )


class AccuracyEstimateSerializer(serializers.Serializer):
    model_version = serializers.CharField()
    n = serializers.IntegerField(help_text="audited items with a current human label")
    correct = serializers.IntegerField(help_text="of which the human agreed with the model")
    accuracy = serializers.FloatField()
    low = serializers.FloatField(help_text="95% interval, lower end (Wilson; stratified when weighted)")
    high = serializers.FloatField(help_text="95% interval, upper end")
    slices = serializers.IntegerField(help_text="audit slices (review batches) pooled")
    weighted = serializers.BooleanField(help_text="slices weighted by the size of the pool each was drawn from")


class MembershipSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", max_length=150)
    role = serializers.ChoiceField(choices=ProjectRole.choices)

    class Meta:
        model = ProjectMembership
        fields = ["user", "role", "created_at"]
        read_only_fields = ["created_at"]


class FieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(allow_blank=True, help_text="e.g. predictions[3].probabilities")
    message = serializers.CharField(help_text="what to fix")


class ErrorSerializer(serializers.Serializer):
    """Every 4xx answer (hitl.api.errors)."""

    detail = serializers.CharField()
    errors = FieldErrorSerializer(many=True)
