from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from hitl.api import artifacts, images, views

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[]), name="api-docs"),
    path("predictions/", views.PredictionIngestView.as_view(), name="predictions-ingest"),
    path("deployment/model/", artifacts.DeploymentModelView.as_view(), name="deployment-model"),
    path("deployment/model/<str:name>", artifacts.DeploymentModelFileView.as_view(), name="deployment-model-file"),
    path("projects/", views.ProjectListView.as_view(), name="projects"),
    path("projects/<slug:slug>/", views.ProjectDetailView.as_view(), name="project"),
    path("projects/<slug:slug>/model-versions/", views.ModelVersionListView.as_view(), name="model-versions"),
    path("projects/<slug:slug>/deployments/", views.DeploymentListView.as_view(), name="deployments"),
    path("projects/<slug:slug>/items/", views.ItemListView.as_view(), name="items"),
    path("projects/<slug:slug>/images/", images.ImageImportView.as_view(), name="images-import"),
    path("projects/<slug:slug>/predictions/", views.PredictionListView.as_view(), name="predictions"),
    path("projects/<slug:slug>/review-queue/", views.ReviewQueueView.as_view(), name="review-queue"),
    path("projects/<slug:slug>/review-batches/", views.ReviewBatchCreateView.as_view(), name="review-batches"),
    path("projects/<slug:slug>/cycles/", views.CycleListCreateView.as_view(), name="cycles"),
    path("projects/<slug:slug>/trust/", views.TrustHistoryView.as_view(), name="trust"),
    path("projects/<slug:slug>/audit/", views.AuditAccuracyView.as_view(), name="audit"),
    path("review-batches/<int:pk>/", views.ReviewBatchDetailView.as_view(), name="review-batch"),
    path("items/<int:pk>/labels/", views.ItemLabelsView.as_view(), name="item-labels"),
    path("items/<int:pk>/image", views.ItemImageView.as_view(), name="item-image"),
    path("cycles/<int:pk>/", views.CycleDetailView.as_view(), name="cycle"),
    path("cycles/<int:pk>/cancel/", views.CycleCancelView.as_view(), name="cycle-cancel"),
]
