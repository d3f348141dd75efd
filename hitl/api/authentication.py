"""Deployments authenticate with their own token: ``Authorization: Deployment <token>``."""

from __future__ import annotations

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from hitl.models import Deployment
from hitl.services.projects import token_digest

KEYWORD = "Deployment"


class DeploymentTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Deployment, str] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode(errors="replace") != KEYWORD:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Deployment header must be 'Deployment <token>'")
        token = header[1].decode(errors="replace")
        deployment = (
            Deployment.objects.select_related("project", "model_version").filter(token_digest=token_digest(token)).first()
        )
        if deployment is None:
            raise exceptions.AuthenticationFailed("unknown deployment token")
        return deployment, token

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD
