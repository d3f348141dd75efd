"""REST API views: thin. They parse, call a service or selector, and serialize."""

from __future__ import annotations

import json

from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hitl import selectors
from hitl.api import serializers as s
from hitl.api.parsers import LenientJSONParser
from hitl.api.permissions import IsDeployment, IsOperator, IsReviewer
from hitl.errors import InvalidInput
from hitl.media import image_response
from hitl.models import Item, LabelSource, RetrainingCycle, ReviewBatch
from hitl.services.cycles import cycle_cancel, cycle_request
from hitl.services.ingestion import predictions_ingest
from hitl.services.labels import label_submit
from hitl.services.projects import project_update
from hitl.services.selection import review_batch_request
from hitl.services.trust import trust_verify


class ById(CursorPagination):
    ordering = "-id"


class PredictionIngestView(APIView):
    """Bulk prediction ingestion for deployments (all-or-nothing)."""

    permission_classes = [IsDeployment]
    parser_classes = [LenientJSONParser, MultiPartParser]

    @extend_schema(
        request={"application/json": {"type": "object", "properties": {
            "model_version": {"type": "string"},
            "predictions": {"type": "array", "items": {"type": "object", "properties": {
                "image_path": {"type": "string", "description": "relative to the storage root"},
                "image_base64": {"type": "string"},
                "image_upload": {"type": "string", "description": "multipart file field name"},
                "probabilities": {"type": "array", "items": {"type": "number"}},
                "predicted_label": {"type": "string"},
            }, "required": ["probabilities"]}},
        }, "required": ["predictions"]}},
        responses={201: s.IngestResultSerializer},
    )
    def post(self, request: Request) -> Response:
        uploads = {}
        payload = request.data
        if request.content_type.startswith("multipart/"):
            uploads = request.FILES
            try:
                payload = json.loads(request.data.get("payload", ""))
            except json.JSONDecodeError as exc:
                raise InvalidInput.single("payload", f"malformed JSON: {exc.msg} at column {exc.colno}") from None
        result = predictions_ingest(deployment=request.user, payload=payload, uploads=uploads)
        return Response(s.IngestResultSerializer(result).data, status=status.HTTP_201_CREATED)


class ProjectListView(generics.ListAPIView):
    permission_classes = [IsReviewer]
    serializer_class = s.ProjectSerializer
    pagination_class = None

    def get_queryset(self):
        return selectors.projects_list()


class ProjectDetailView(APIView):
    """A project (GET); staff change its settings (PATCH): strategy, batch size, audit share, ..."""

    parser_classes = [LenientJSONParser]

    def get_permissions(self):
        return [IsOperator()] if self.request.method == "PATCH" else [IsReviewer()]

    @extend_schema(responses=s.ProjectSerializer)
    def get(self, request: Request, slug: str) -> Response:
        return Response(s.ProjectSerializer(selectors.project_get(slug)).data)

    @extend_schema(request=s.ProjectSerializer, responses=s.ProjectSerializer)
    def patch(self, request: Request, slug: str) -> Response:
        if not isinstance(request.data, dict):
            raise InvalidInput.single("", "body must be a JSON object of settings")
        project = project_update(project_id=selectors.project_get(slug).id, changes=dict(request.data))
        return Response(s.ProjectSerializer(project).data)


class DeploymentListView(generics.ListAPIView):
    permission_classes = [IsReviewer]
    serializer_class = s.DeploymentSerializer
    pagination_class = None

    def get_queryset(self):
        return selectors.project_get(self.kwargs["slug"]).deployments.select_related("model_version").order_by("name")


class ModelVersionListView(generics.ListAPIView):
    permission_classes = [IsReviewer]
    serializer_class = s.ModelVersionSerializer
    pagination_class = None

    def get_queryset(self):
        return selectors.model_versions_list(selectors.project_get(self.kwargs["slug"]))


@extend_schema(parameters=[
    OpenApiParameter("split", str, enum=["train", "holdout"]),
    OpenApiParameter("labeled", bool),
])
class ItemListView(generics.ListAPIView):
    permission_classes = [IsReviewer]
    serializer_class = s.ItemSerializer
    pagination_class = ById

    def get_queryset(self):
        labeled = self.request.query_params.get("labeled")
        if labeled not in (None, "true", "false"):
            raise InvalidInput.single("labeled", "use true or false")
        split = self.request.query_params.get("split")
        if split not in (None, "train", "holdout"):
            raise InvalidInput.single("split", "use train or holdout")
        return selectors.items_list(
            selectors.project_get(self.kwargs["slug"]), split=split,
            labeled=None if labeled is None else labeled == "true",
        )


@extend_schema(parameters=[OpenApiParameter("model_version", str), OpenApiParameter("item", int)])
class PredictionListView(generics.ListAPIView):
    permission_classes = [IsReviewer]
    serializer_class = s.PredictionSerializer
    pagination_class = ById

    def get_queryset(self):
        item = self.request.query_params.get("item")
        if item is not None and not (item.isascii() and item.isdecimal()):
            raise InvalidInput.single("item", "must be an item id")
        return selectors.predictions_list(
            selectors.project_get(self.kwargs["slug"]),
            model_version=self.request.query_params.get("model_version"),
            item_id=int(item) if item is not None else None,
        )


class ReviewQueueView(generics.ListAPIView):
    permission_classes = [IsReviewer]
    serializer_class = s.ReviewTaskSerializer

    def get_queryset(self):
        return selectors.review_queue(selectors.project_get(self.kwargs["slug"]))


class ReviewBatchCreateView(APIView):
    permission_classes = [IsOperator]

    @extend_schema(request=s.ReviewBatchRequestSerializer, responses={202: s.ReviewBatchSerializer})
    def post(self, request: Request, slug: str) -> Response:
        body = s.ReviewBatchRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        batch = review_batch_request(project=selectors.project_get(slug), requested_by=request.user.get_username(),
                                     **body.validated_data)
        return Response(s.ReviewBatchSerializer(batch).data, status=status.HTTP_202_ACCEPTED)


class ReviewBatchDetailView(generics.RetrieveAPIView):
    permission_classes = [IsReviewer]
    serializer_class = s.ReviewBatchSerializer
    queryset = ReviewBatch.objects.select_related("model_version")


class ItemLabelsView(APIView):
    """An item's label history (GET) and label submission (POST)."""

    permission_classes = [IsReviewer]

    @extend_schema(responses=s.LabelSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        item = get_object_or_404(Item, pk=pk)
        return Response(s.LabelSerializer(selectors.item_labels(item), many=True).data)

    @extend_schema(request=s.LabelSubmitSerializer, responses={201: s.LabelSerializer})
    def post(self, request: Request, pk: int) -> Response:
        get_object_or_404(Item, pk=pk)
        body = s.LabelSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        label = label_submit(
            item_id=pk, value=body.validated_data["value"], source=LabelSource.API, reviewer=request.user,
            review_task_id=body.validated_data.get("review_task"),
            lead_time_seconds=body.validated_data.get("lead_time_seconds"),
        )
        return Response(s.LabelSerializer(label).data, status=status.HTTP_201_CREATED)


class ItemImageView(APIView):
    permission_classes = [IsReviewer]

    @extend_schema(responses={(200, "image/*"): bytes})
    def get(self, request: Request, pk: int) -> FileResponse:
        return image_response(get_object_or_404(Item, pk=pk))


class CycleListCreateView(APIView):
    def get_permissions(self):
        return [IsOperator()] if self.request.method == "POST" else [IsReviewer()]

    @extend_schema(responses=s.CycleSerializer(many=True))
    def get(self, request: Request, slug: str) -> Response:
        return Response(s.CycleSerializer(selectors.cycles_list(selectors.project_get(slug)), many=True).data)

    @extend_schema(request=s.CycleRequestSerializer, responses={202: s.CycleSerializer})
    def post(self, request: Request, slug: str) -> Response:
        body = s.CycleRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        cycle = cycle_request(project=selectors.project_get(slug), requested_by=request.user.get_username(),
                              train_config=body.validated_data.get("train_config"))
        return Response(s.CycleSerializer(cycle).data, status=status.HTTP_202_ACCEPTED)


class CycleDetailView(generics.RetrieveAPIView):
    permission_classes = [IsReviewer]
    serializer_class = s.CycleSerializer
    queryset = RetrainingCycle.objects.select_related("base_version", "candidate_version").prefetch_related("snapshots")


class CycleCancelView(APIView):
    permission_classes = [IsOperator]

    @extend_schema(request=None, responses=s.CycleSerializer)
    def post(self, request: Request, pk: int) -> Response:
        cycle = cycle_cancel(cycle_id=get_object_or_404(RetrainingCycle, pk=pk).pk, actor=request.user.get_username())
        return Response(s.CycleSerializer(cycle).data)


class AuditAccuracyView(APIView):
    """Live accuracy per model version, estimated from the labels of the random audit slices."""

    permission_classes = [IsReviewer]

    @extend_schema(responses={200: {"type": "array", "items": {"type": "object"}}})
    def get(self, request: Request, slug: str) -> Response:
        return Response([vars(e) for e in selectors.audit_accuracy(selectors.project_get(slug))])


class TrustHistoryView(APIView):
    permission_classes = [IsReviewer]

    @extend_schema(responses={200: {"type": "object"}})
    def get(self, request: Request, slug: str) -> Response:
        project = selectors.project_get(slug)
        check = trust_verify(project_id=project.id)
        events = project.trust_events.order_by("sequence")
        return Response({
            "verified": check.ok, "problem": check.problem, "first_bad_sequence": check.first_bad_sequence,
            "head_hash": check.head_hash,
            "events": s.TrustEventSerializer(events, many=True).data,
        })
