from django.urls import path

from hitl.web import alerts, pages, review, views

app_name = "web"
urlpatterns = [
    path("", views.projects, name="projects"),
    path("projects/<slug:slug>/review/", views.review_queue, name="review-queue"),
    path("projects/<slug:slug>/cycles/", views.cycles, name="cycles"),
    path("review-tasks/<int:pk>/label", views.review_task_label, name="review-task-label"),
    path("cycles/<int:pk>/", pages.cycle_detail, name="cycle"),
    path("cycles/<int:pk>/decide", views.cycle_decide, name="cycle-decide"),
    path("projects/<slug:slug>/rollback", views.rollback, name="rollback"),
    path("projects/<slug:slug>/label/", review.review_page, name="review"),
    path("projects/<slug:slug>/label/lease", review.review_lease, name="review-lease"),
    path("review-tasks/<int:pk>/answer", review.review_task_answer, name="review-task-answer"),
    path("labels/<int:pk>/undo", review.label_undo_view, name="label-undo"),
    path("items/<int:pk>/", review.item_page, name="item"),
    path("review-answers/<int:pk>/undo", review.answer_undo_view, name="answer-undo"),
    path("projects/<slug:slug>/conflicts/", review.conflicts_page, name="conflicts"),
    path("review-tasks/<int:pk>/decide", review.conflict_decide, name="conflict-decide"),
    path("projects/<slug:slug>/reviewers/", review.reviewers_page, name="reviewers"),
    path("projects/<slug:slug>/alerts/", alerts.alerts, name="alerts"),
    path("alerts/<int:pk>/acknowledge", alerts.alert_acknowledge_view, name="alert-acknowledge"),
    path("projects/<slug:slug>/", pages.dashboard, name="dashboard"),
    path("projects/<slug:slug>/models/", pages.models, name="models"),
    path("projects/<slug:slug>/models/<str:name>/<str:kind>", pages.model_artifact, name="model-artifact"),
    path("projects/<slug:slug>/trust/", pages.trust, name="trust"),
    path("projects/<slug:slug>/trust/export", pages.trust_export_download, name="trust-export"),
    path("projects/<slug:slug>/trust/verify", pages.trust_verify_page, name="trust-verify"),
    path("cycles/<int:pk>/progress", pages.cycle_progress, name="cycle-progress"),
    path("cycles/<int:pk>/cancel", pages.cycle_cancel_page, name="cycle-cancel"),
]
