from django.urls import path

from labeling import views

app_name = "labeling"
urlpatterns = [
    path("webhook/<int:link_id>/", views.webhook, name="webhook"),
    path("images/<int:item_id>/<str:signature>", views.image, name="image"),
]
