"""The API of verdicts: approving or rejecting a candidate that waits, rolling back, the golden
set, and why a model is where it is. Thin: parse, call a service or selector, serialize."""

from __future__ import annotations

from collections.abc import Callable

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hitl import selectors
from hitl.api import serializers as s
from hitl.api.parsers import StrictJSONParser
from hitl.api.views import ProjectScoped
from hitl.errors import InvalidInput
from hitl.models import ModelVersion, RetrainingCycle
from hitl.services.access import Action
from hitl.services.cycles import cycle_approve, cycle_reject, model_version_rollback
from hitl.services.golden import golden_set_freeze, golden_set_propose


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000)


class RollbackSerializer(ReasonSerializer):
    model_version = serializers.CharField(max_length=64)


class GoldenSetActionSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["propose", "freeze"])
    size = serializers.IntegerField(required=False, min_value=1, max_value=10_000)
    reason = serializers.CharField(required=False, max_length=2000)
    from_audit = serializers.BooleanField(required=False, default=False)


class GoldenSetSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    n_items = serializers.SerializerMethodField()
    items_sha256 = serializers.CharField()
    created_by = serializers.CharField()
    reason = serializers.CharField()
    frozen_at = serializers.DateTimeField()
    item_ids = serializers.ListField(child=serializers.IntegerField())

    def get_n_items(self, golden) -> int:
        return len(golden.item_ids)


def _valid(serializer_class: type[serializers.Serializer], data: object) -> dict:
    if not isinstance(data, dict):
        raise InvalidInput.single("", "body must be a JSON object")
    body = serializer_class(data=data)
    body.is_valid(raise_exception=True)
    return body.validated_data


class _CycleDecisionView(ProjectScoped, APIView):
    """A person's decision on a candidate that waits for one (``{"reason"}``): ``decide`` is the
    service that records it."""

    owner = RetrainingCycle
    access = {"POST": Action.APPROVE}
    parser_classes = [StrictJSONParser]
    decide: Callable[..., RetrainingCycle]

    @extend_schema(request=ReasonSerializer, responses=s.CycleSerializer)
    def post(self, request: Request, pk: int) -> Response:
        body = _valid(ReasonSerializer, request.data)
        cycle = type(self).decide(cycle_id=pk, actor=request.user.get_username(), reason=body["reason"])
        return Response(s.CycleSerializer(cycle).data)


class CycleApproveView(_CycleDecisionView):
    """Promote a candidate that passed the gate and waits for a person (``{"reason"}``)."""

    decide = staticmethod(cycle_approve)


class CycleRejectView(_CycleDecisionView):
    """Turn down a candidate that waits for a person (``{"reason"}``)."""

    decide = staticmethod(cycle_reject)


class RollbackView(ProjectScoped, APIView):
    """Put an earlier production model back (``{"model_version", "reason"}``); deployments that
    follow production switch with it."""

    access = {"POST": Action.ROLLBACK}
    parser_classes = [StrictJSONParser]

    @extend_schema(request=RollbackSerializer, responses=s.ModelVersionSerializer)
    def post(self, request: Request, slug: str) -> Response:
        body = _valid(RollbackSerializer, request.data)
        version = model_version_rollback(project=self.project, name=body["model_version"],
                                         actor=request.user.get_username(), reason=body["reason"])
        return Response(s.ModelVersionSerializer(selectors.model_versions_list(self.project).get(pk=version.pk)).data)


class GoldenSetView(ProjectScoped, generics.ListAPIView):
    """The golden-set versions (GET); propose random items for it (POST ``{"action": "propose",
    "size"}``) or freeze a new version (POST ``{"action": "freeze", "reason", "from_audit"}``)."""

    access = {"GET": Action.VIEW, "POST": Action.APPROVE}
    parser_classes = [StrictJSONParser]
    serializer_class = GoldenSetSerializer

    def get_queryset(self):
        return selectors.golden_sets_list(self.project)

    @extend_schema(request=GoldenSetActionSerializer,
                   responses={201: GoldenSetSerializer, 202: s.ReviewBatchSerializer})
    def post(self, request: Request, slug: str) -> Response:
        body = _valid(GoldenSetActionSerializer, request.data)
        actor = request.user.get_username()
        if body["action"] == "propose":
            if "size" not in body:
                raise InvalidInput.single("size", "how many random items to propose for the golden set")
            batch = golden_set_propose(project=self.project, size=body["size"], requested_by=actor)
            return Response(s.ReviewBatchSerializer(batch).data, status=status.HTTP_202_ACCEPTED)
        golden = golden_set_freeze(project=self.project, actor=actor, reason=body.get("reason", ""),
                                   from_audit=body["from_audit"])
        return Response(GoldenSetSerializer(golden).data, status=status.HTTP_201_CREATED)


class LabelPages(PageNumberPagination):
    page_size = 100


class ExplainView(ProjectScoped, APIView):
    """Why a model version is where it is: parents, the labels it learned from (summary, and the
    full list a page at a time under ``labels``), its evaluations with intervals, who or what
    promoted it."""

    @extend_schema(parameters=[OpenApiParameter("page", int)], responses={200: dict})
    def get(self, request: Request, slug: str, name: str) -> Response:
        version = get_object_or_404(ModelVersion, project=self.project, name=name)
        paginator = LabelPages()
        page = paginator.paginate_queryset(selectors.model_training_labels(version), request, view=self)
        labels = [{"id": label.id, "item": label.item_id, "item_sha256": label.item.sha256, "value": label.value,
                   "status": label.status, "source": label.source, "reviewer": label.reviewer_name,
                   "external_id": label.external_id, "created_at": label.created_at.isoformat()}
                  for label in page]
        return Response({**selectors.model_explain(version), "labels": {
            "count": paginator.page.paginator.count, "next": paginator.get_next_link(),
            "previous": paginator.get_previous_link(), "results": labels,
        }})
