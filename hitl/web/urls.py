from django.urls import path

from hitl.web import alerts, views

app_name = "web"
urlpatterns = [
    path("", views.projects, name="projects"),
    path("projects/<slug:slug>/review/", views.review_queue, name="review-queue"),
    path("projects/<slug:slug>/cycles/", views.cycles, name="cycles"),
    path("review-tasks/<int:pk>/label", views.review_task_label, name="review-task-label"),
    path("cycles/<int:pk>/", views.cycle_detail, name="cycle"),
    path("cycles/<int:pk>/decide", views.cycle_decide, name="cycle-decide"),
    path("projects/<slug:slug>/rollback", views.rollback, name="rollback"),
    path("projects/<slug:slug>/alerts/", alerts.alerts, name="alerts"),
    path("alerts/<int:pk>/acknowledge", alerts.alert_acknowledge_view, name="alert-acknowledge"),
]
