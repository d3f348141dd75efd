from django.urls import path

from hitl.web import pages, views

app_name = "web"
urlpatterns = [
    path("", views.projects, name="projects"),
    path("projects/<slug:slug>/review/", views.review_queue, name="review-queue"),
    path("projects/<slug:slug>/cycles/", views.cycles, name="cycles"),
    path("review-tasks/<int:pk>/label", views.review_task_label, name="review-task-label"),
    path("cycles/<int:pk>/", pages.cycle_detail, name="cycle"),
    path("cycles/<int:pk>/decide", views.cycle_decide, name="cycle-decide"),
    path("projects/<slug:slug>/rollback", views.rollback, name="rollback"),
    path("projects/<slug:slug>/", pages.dashboard, name="dashboard"),
    path("projects/<slug:slug>/models/", pages.models, name="models"),
    path("projects/<slug:slug>/models/<str:name>/<str:kind>", pages.model_artifact, name="model-artifact"),
    path("projects/<slug:slug>/trust/", pages.trust, name="trust"),
    path("projects/<slug:slug>/trust/export", pages.trust_export_download, name="trust-export"),
    path("cycles/<int:pk>/progress", pages.cycle_progress, name="cycle-progress"),
    path("cycles/<int:pk>/cancel", pages.cycle_cancel_page, name="cycle-cancel"),
]
