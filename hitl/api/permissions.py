"""Who may call what. People act in a project only through their membership role there (decided
by hitl.services.access.role_required); deployments may only ingest predictions."""

from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import NotFound
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from hitl.models import Deployment
from hitl.selectors import is_person
from hitl.services.access import NotAMember, RoleTooLow, role_required

PERSON_MESSAGE = (
    "authenticate as a user (token or session); deployment tokens may only send predictions"
)


class IsDeployment(BasePermission):
    message = "authenticate as a deployment: 'Authorization: Deployment <token>'"

    def has_permission(self, request: Request, view: object) -> bool:
        return isinstance(request.user, Deployment)


class IsPerson(BasePermission):
    """A signed-in, active person (not a deployment token)."""

    message = PERSON_MESSAGE

    def has_permission(self, request: Request, view: object) -> bool:
        return is_person(request.user)


class ProjectAccess(IsPerson):
    """The gate of every project-scoped endpoint. The view names its project (``view.project``,
    None when there is no such object) and the action each method needs (``view.action_for``). A
    non-member gets the same 404 as for a project that does not exist; a member whose role is
    too low gets a 403 naming the role needed."""

    def has_permission(self, request: Request, view: object) -> bool:
        if not is_person(request.user):
            return False
        project = view.project
        if project is None:
            raise NotFound(view.not_found)
        try:
            role_required(
                project=project, user=request.user, action=view.action_for(request.method)
            )
        except NotAMember:
            raise NotFound(view.not_found) from None
        except RoleTooLow as exc:
            self.message = str(exc)
            return False
        return True


class SchemaReader(IsPerson):
    """The OpenAPI schema: signed-in people only, unless HITL_PUBLIC_API_SCHEMA opens it."""

    def has_permission(self, request: Request, view: object) -> bool:
        return settings.HITL_PUBLIC_API_SCHEMA or is_person(request.user)
