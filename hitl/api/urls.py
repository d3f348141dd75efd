from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from hitl.api import artifacts, images, monitoring_views, verdict_views, views
from hitl.api.permissions import SchemaReader
from hitl.selectors import is_person

swagger_ui = SpectacularSwaggerSplitView.as_view(url_name="schema", permission_classes=[])


def api_docs(request: HttpRequest) -> HttpResponse:
    """Swagger UI: a browser that is not signed in goes to the login page first (its schema
    request needs the same session), unless HITL_PUBLIC_API_SCHEMA opens both."""
    if not (settings.HITL_PUBLIC_API_SCHEMA or is_person(request.user)):
        return redirect_to_login(request.get_full_path())
    return swagger_ui(request)


urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(permission_classes=[SchemaReader]), name="schema"),
    path("docs/", api_docs, name="api-docs"),
    path("predictions/", views.PredictionIngestView.as_view(), name="predictions-ingest"),
    path("deployment/model/", artifacts.DeploymentModelView.as_view(), name="deployment-model"),
    path("deployment/model/<str:name>", artifacts.DeploymentModelFileView.as_view(), name="deployment-model-file"),
    path("projects/", views.ProjectListView.as_view(), name="projects"),
    path("projects/<slug:slug>/", views.ProjectDetailView.as_view(), name="project"),
    path(
        "projects/<slug:slug>/model-versions/",
        views.ModelVersionListView.as_view(),
        name="model-versions",
    ),
    path(
        "projects/<slug:slug>/deployments/", views.DeploymentListView.as_view(), name="deployments"
    ),
    path("projects/<slug:slug>/members/", views.MemberListView.as_view(), name="members"),
    path("projects/<slug:slug>/items/", views.ItemListView.as_view(), name="items"),
    path("projects/<slug:slug>/images/", images.ImageImportView.as_view(), name="images-import"),
    path(
        "projects/<slug:slug>/predictions/", views.PredictionListView.as_view(), name="predictions"
    ),
    path(
        "projects/<slug:slug>/review-queue/", views.ReviewQueueView.as_view(), name="review-queue"
    ),
    path(
        "projects/<slug:slug>/review-batches/",
        views.ReviewBatchCreateView.as_view(),
        name="review-batches",
    ),
    path("projects/<slug:slug>/cycles/", views.CycleListCreateView.as_view(), name="cycles"),
    path("projects/<slug:slug>/trust/", views.TrustHistoryView.as_view(), name="trust"),
    path("projects/<slug:slug>/audit/", views.AuditAccuracyView.as_view(), name="audit"),
    path("review-batches/<int:pk>/", views.ReviewBatchDetailView.as_view(), name="review-batch"),
    path("items/<int:pk>/labels/", views.ItemLabelsView.as_view(), name="item-labels"),
    path("items/<int:pk>/image", views.ItemImageView.as_view(), name="item-image"),
    path("cycles/<int:pk>/", views.CycleDetailView.as_view(), name="cycle"),
    path("cycles/<int:pk>/cancel/", views.CycleCancelView.as_view(), name="cycle-cancel"),
    path("cycles/<int:pk>/approve/", verdict_views.CycleApproveView.as_view(), name="cycle-approve"),
    path("cycles/<int:pk>/reject/", verdict_views.CycleRejectView.as_view(), name="cycle-reject"),
    path("projects/<slug:slug>/rollback/", verdict_views.RollbackView.as_view(), name="rollback"),
    path(
        "projects/<slug:slug>/golden-sets/", verdict_views.GoldenSetView.as_view(), name="golden-sets"
    ),
    path(
        "projects/<slug:slug>/model-versions/<str:name>/explain/",
        verdict_views.ExplainView.as_view(),
        name="model-version-explain",
    ),
    path("projects/<slug:slug>/alerts/", monitoring_views.AlertListView.as_view(), name="alerts"),
    path(
        "alerts/<int:pk>/acknowledge/",
        monitoring_views.AlertAcknowledgeView.as_view(),
        name="alert-acknowledge",
    ),
    path(
        "projects/<slug:slug>/monitor-windows/",
        monitoring_views.MonitorWindowListView.as_view(),
        name="monitor-windows",
    ),
]
