"""REST API views: thin. They parse, call a service or selector, and serialize."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils.functional import cached_property
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hitl import selectors
from hitl.api import serializers as s
from hitl.api.parsers import StrictJSONParser
from hitl.api.permissions import IsDeployment, IsPerson, ProjectAccess
from hitl.errors import InvalidInput
from hitl.jsonpolicy import json_document, query_id
from hitl.media import image_response
from hitl.models import Item, LabelSource, Project, RetrainingCycle, ReviewBatch
from hitl.services.access import Action, membership_remove, membership_set
from hitl.services.cycles import cycle_cancel, cycle_request
from hitl.services.ingestion import predictions_ingest
from hitl.services.labels import label_submit
from hitl.services.projects import project_update
from hitl.services.selection import review_batch_request
from hitl.services.trust import trust_status


class ById(CursorPagination):
    ordering = "-id"


class ProjectScoped:
    """An endpoint inside one project. ProjectAccess checks the member's role against the
    action ``access`` names for the request's method. The project is the one the URL's slug
    names, or (``owner``) the one owning the item, cycle or review batch whose id the URL names."""

    permission_classes = [ProjectAccess]
    access: dict[str, Action] = {"GET": Action.VIEW}
    owner: type[Item | RetrainingCycle | ReviewBatch] | None = None
    kwargs: dict

    @cached_property
    def project(self) -> Project | None:
        if self.owner is None:
            return selectors.project_find(self.kwargs["slug"])
        return selectors.project_owning(self.owner, self.kwargs["pk"])

    @property
    def not_found(self) -> str:
        """The same words for an object that does not exist and one in another's project."""
        if self.owner is None:
            return f"no project {self.kwargs['slug']!r}"
        return f"no {self.owner._meta.verbose_name} {self.kwargs['pk']}"

    def action_for(self, method: str) -> Action:
        if method in self.access:
            return self.access[method]
        if method in ("HEAD", "OPTIONS") or not hasattr(self, method.lower()):
            return Action.VIEW  # reads, or a method the view lacks (it answers 405)
        raise ImproperlyConfigured(f"{type(self).__name__} names no access action for {method}")


class PredictionIngestView(APIView):
    """Bulk prediction ingestion for deployments (all-or-nothing)."""

    permission_classes = [IsDeployment]
    parser_classes = [StrictJSONParser, MultiPartParser]

    @extend_schema(
        request={"application/json": s.IngestRequestSerializer,
                 "multipart/form-data": s.IngestMultipartSerializer},
        responses={201: s.IngestResultSerializer},
    )
    def post(self, request: Request) -> Response:
        uploads = {}
        payload = request.data
        if request.content_type.startswith("multipart/"):
            uploads = request.FILES
            payload = json_document(request.data.get("payload", ""), field="payload")
        result = predictions_ingest(deployment=request.user, payload=payload, uploads=uploads)
        return Response(s.IngestResultSerializer(result).data, status=status.HTTP_201_CREATED)


class ProjectListView(generics.ListAPIView):
    """The projects the caller is a member of."""

    permission_classes = [IsPerson]
    serializer_class = s.ProjectSerializer

    def get_queryset(self):
        return selectors.projects_visible(self.request.user)


class ProjectDetailView(ProjectScoped, APIView):
    """A project (GET); its admins change its settings (PATCH): strategy, batch size, audit
    share, ..."""

    access = {"GET": Action.VIEW, "PATCH": Action.CHANGE_SETTINGS}
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=s.ProjectSerializer)
    def get(self, request: Request, slug: str) -> Response:
        return Response(s.ProjectSerializer(self.project).data)

    @extend_schema(request=s.ProjectSerializer, responses=s.ProjectSerializer)
    def patch(self, request: Request, slug: str) -> Response:
        if not isinstance(request.data, dict):
            raise InvalidInput.single("", "body must be a JSON object of settings")
        project = project_update(project_id=self.project.id, changes=dict(request.data))
        return Response(s.ProjectSerializer(project).data)


class DeploymentListView(ProjectScoped, generics.ListAPIView):
    serializer_class = s.DeploymentSerializer

    def get_queryset(self):
        return self.project.deployments.select_related("model_version").order_by("name")


class ModelVersionListView(ProjectScoped, generics.ListAPIView):
    serializer_class = s.ModelVersionSerializer

    def get_queryset(self):
        return selectors.model_versions_list(self.project)


@extend_schema(parameters=[
    OpenApiParameter("split", str, enum=["train", "holdout"]),
    OpenApiParameter("labeled", bool),
])
class ItemListView(ProjectScoped, generics.ListAPIView):
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
            self.project, split=split, labeled=None if labeled is None else labeled == "true",
        )


@extend_schema(parameters=[OpenApiParameter("model_version", str), OpenApiParameter("item", int)])
class PredictionListView(ProjectScoped, generics.ListAPIView):
    serializer_class = s.PredictionSerializer
    pagination_class = ById

    def get_queryset(self):
        return selectors.predictions_list(
            self.project, model_version=self.request.query_params.get("model_version"),
            item_id=query_id(self.request.query_params, "item"),
        )


class ReviewQueueView(ProjectScoped, generics.ListAPIView):
    serializer_class = s.ReviewTaskSerializer

    def get_queryset(self):
        return selectors.review_queue(self.project)


class ReviewBatchCreateView(ProjectScoped, APIView):
    access = {"POST": Action.SELECT_BATCH}

    @extend_schema(request=s.ReviewBatchRequestSerializer, responses={202: s.ReviewBatchSerializer})
    def post(self, request: Request, slug: str) -> Response:
        body = s.ReviewBatchRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        batch = review_batch_request(project=self.project, requested_by=request.user.get_username(),
                                     **body.validated_data)
        return Response(s.ReviewBatchSerializer(batch).data, status=status.HTTP_202_ACCEPTED)


class ReviewBatchDetailView(ProjectScoped, generics.RetrieveAPIView):
    owner = ReviewBatch
    serializer_class = s.ReviewBatchSerializer
    queryset = ReviewBatch.objects.select_related("model_version")


class ItemLabelsView(ProjectScoped, generics.ListAPIView):
    """An item's label history (GET) and label submission (POST, reviewers and up). A held-out
    item takes labels only through a review task (``review_task``)."""

    owner = Item
    access = {"GET": Action.VIEW, "POST": Action.LABEL}
    serializer_class = s.LabelSerializer

    def get_queryset(self):
        return selectors.item_labels(get_object_or_404(Item, pk=self.kwargs["pk"]))

    @extend_schema(request=s.LabelSubmitSerializer, responses={201: s.LabelSerializer})
    def post(self, request: Request, pk: int) -> Response:
        body = s.LabelSubmitSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        label = label_submit(
            item_id=pk, value=body.validated_data["value"], source=LabelSource.API, reviewer=request.user,
            review_task_id=body.validated_data.get("review_task"),
            lead_time_seconds=body.validated_data.get("lead_time_seconds"),
        )
        return Response(s.LabelSerializer(label).data, status=status.HTTP_201_CREATED)


class ItemImageView(ProjectScoped, APIView):
    owner = Item

    @extend_schema(responses={(200, "image/*"): bytes})
    def get(self, request: Request, pk: int) -> HttpResponse:
        return image_response(request, get_object_or_404(Item, pk=pk))


class CycleListCreateView(ProjectScoped, generics.ListAPIView):
    """The project's retraining cycles (GET); ML engineers and admins start one (POST)."""

    access = {"GET": Action.VIEW, "POST": Action.START_CYCLE}
    serializer_class = s.CycleSerializer

    def get_queryset(self):
        return selectors.cycles_list(self.project)

    @extend_schema(request=s.CycleRequestSerializer, responses={202: s.CycleSerializer})
    def post(self, request: Request, slug: str) -> Response:
        body = s.CycleRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        cycle = cycle_request(project=self.project, requested_by=request.user.get_username(),
                              train_config=body.validated_data.get("train_config"))
        return Response(s.CycleSerializer(cycle).data, status=status.HTTP_202_ACCEPTED)


class CycleDetailView(ProjectScoped, generics.RetrieveAPIView):
    owner = RetrainingCycle
    serializer_class = s.CycleSerializer
    queryset = RetrainingCycle.objects.select_related("base_version", "candidate_version").prefetch_related("snapshots")


class CycleCancelView(ProjectScoped, APIView):
    owner = RetrainingCycle
    access = {"POST": Action.CANCEL_CYCLE}

    @extend_schema(request=None, responses=s.CycleSerializer)
    def post(self, request: Request, pk: int) -> Response:
        cycle = cycle_cancel(cycle_id=pk, actor=request.user.get_username())
        return Response(s.CycleSerializer(cycle).data)


class AuditAccuracyView(ProjectScoped, generics.ListAPIView):
    """Live accuracy per model version, estimated from the labels of the random audit slices."""

    serializer_class = s.AccuracyEstimateSerializer

    def get_queryset(self):
        return selectors.audit_accuracy(self.project)


class TrustPages(PageNumberPagination):
    """A page of the trust history, with whether the whole chain verifies and its head hash."""

    check: dict[str, object]

    def get_paginated_response(self, data: list) -> Response:
        response = super().get_paginated_response(data)
        response.data = {**self.check, **response.data}
        return response

    def get_paginated_response_schema(self, schema: dict) -> dict:
        paginated = super().get_paginated_response_schema(schema)
        paginated["properties"] = {
            "verified": {"type": "boolean"},
            "problem": {"type": "string"},
            "cause": {"type": "string"},
            "first_bad_sequence": {"type": "integer", "nullable": True},
            "head_hash": {"type": "string", "nullable": True},
            **paginated["properties"],
        }
        paginated["required"] = ["verified", "problem", "cause", "first_bad_sequence", "head_hash",
                                 *paginated.get("required", [])]
        return paginated


class TrustHistoryView(ProjectScoped, generics.ListAPIView):
    """The project's trust history, oldest first, a page at a time."""

    serializer_class = s.TrustEventSerializer
    pagination_class = TrustPages

    def get_queryset(self):
        return self.project.trust_events.order_by("sequence")

    def paginate_queryset(self, queryset):
        check = trust_status(project_id=self.project.id)
        self.paginator.check = {
            "verified": check.ok, "problem": check.problem, "cause": check.cause,
            "first_bad_sequence": check.first_bad_sequence, "head_hash": check.head_hash,
        }
        return super().paginate_queryset(queryset)


class MemberListView(ProjectScoped, generics.ListAPIView):
    """A project's members and their roles (project admins only): list (GET), add or change a
    role (POST ``{"user", "role"}``), remove (DELETE ``?user=<username>``)."""

    access = {method: Action.MANAGE_MEMBERS for method in ("GET", "POST", "DELETE")}
    serializer_class = s.MembershipSerializer

    def get_queryset(self):
        return selectors.memberships_list(self.project)

    @extend_schema(request=s.MembershipSerializer, responses={201: s.MembershipSerializer})
    def post(self, request: Request, slug: str) -> Response:
        body = s.MembershipSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        membership = membership_set(
            project=self.project, user=_user(body.validated_data["user"]["username"]),
            role=body.validated_data["role"], actor=request.user.get_username(),
        )
        return Response(s.MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("user", str, required=True, description="who to remove")],
        responses={204: None},
    )
    def delete(self, request: Request, slug: str) -> Response:
        name = request.query_params.get("user")
        if not name:
            raise InvalidInput.single("user", "name the member to remove: ?user=<username>")
        membership_remove(project=self.project, user=_user(name), actor=request.user.get_username())
        return Response(status=status.HTTP_204_NO_CONTENT)


def _user(username: str) -> AbstractBaseUser:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise InvalidInput.single("user", f"no user {username!r}")
    return user
