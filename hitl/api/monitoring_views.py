"""Monitoring in the API: a project's alerts and measured windows (members), acknowledging an
alert (ML engineers and admins: ``Action.ACKNOWLEDGE_ALERT``)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hitl import selectors
from hitl.api.views import ProjectScoped
from hitl.errors import InvalidInput
from hitl.models import Alert, AlertStatus, MonitorWindow
from hitl.services.access import Action
from hitl.services.alerts import MAX_NOTE, alert_acknowledge


class AlertSerializer(serializers.ModelSerializer):
    deployment = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Alert
        fields = ["id", "deployment", "model_version", "metric", "value", "threshold", "message",
                  "window_start", "window_end", "status", "acknowledged_by_name", "acknowledged_at",
                  "acknowledge_note", "action", "action_detail", "review_batch", "cycle", "email_sent_at",
                  "webhook_sent_at", "webhook_error", "created_at"]
        read_only_fields = fields


class AcknowledgeSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, max_length=MAX_NOTE, default="")


class MonitorWindowSerializer(serializers.ModelSerializer):
    deployment = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    model_version = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = MonitorWindow
        fields = ["id", "deployment", "model_version", "window_start", "window_end", "n_predictions",
                  "metrics", "computed_at"]
        read_only_fields = fields


class NewestFirst(CursorPagination):
    ordering = "-id"


@extend_schema(parameters=[OpenApiParameter("status", str, enum=AlertStatus.values)])
class AlertListView(ProjectScoped, generics.ListAPIView):
    """The project's monitoring alerts, newest first; ``?status=open`` for those not acknowledged."""

    serializer_class = AlertSerializer
    pagination_class = NewestFirst

    def get_queryset(self):
        status = self.request.query_params.get("status")
        if status not in (None, *AlertStatus.values):
            raise InvalidInput.single("status", f"use one of {', '.join(AlertStatus.values)}")
        return selectors.alerts_list(self.project, status=status)


class AlertAcknowledgeView(ProjectScoped, APIView):
    """A person has seen the alert (POST ``{"note": "..."}``); acknowledging twice keeps the first."""

    owner = Alert
    access = {"POST": Action.ACKNOWLEDGE_ALERT}

    @extend_schema(request=AcknowledgeSerializer, responses=AlertSerializer)
    def post(self, request: Request, pk: int) -> Response:
        body = AcknowledgeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        alert = alert_acknowledge(alert_id=pk, user=request.user, note=body.validated_data["note"])
        return Response(AlertSerializer(alert).data)


class MonitorWindowListView(ProjectScoped, generics.ListAPIView):
    """Every measured window, newest first: volume and drift per deployment, live accuracy and
    reviewer agreement per model version (``deployment`` null)."""

    serializer_class = MonitorWindowSerializer

    def get_queryset(self):
        return selectors.monitor_windows_list(self.project)
