from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from hitl.models import Deployment


class IsDeployment(BasePermission):
    message = "authenticate as a deployment: 'Authorization: Deployment <token>'"

    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.user, Deployment)


class IsReviewer(BasePermission):
    """A signed-in person (not a deployment token)."""

    message = "authenticate as a user (token or session)"

    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.user, AbstractBaseUser) and request.user.is_active


class IsOperator(IsReviewer):
    """Staff may start selections and retraining cycles."""

    message = "only staff users may do this"

    def has_permission(self, request: Request, view: object) -> bool:
        return super().has_permission(request, view) and request.user.is_staff
