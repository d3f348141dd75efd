from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("api/v1/", include("hitl.api.urls")),
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("labeling/", include("labeling.urls")),
    path("", include("hitl.web.urls")),
]

handler400 = "hitl.api.errors.bad_request"
handler404 = "hitl.api.errors.not_found"
