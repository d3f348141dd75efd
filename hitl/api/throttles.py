"""Request rates per kind of caller: anonymous (by address), a person (by user id) and a
deployment (by deployment id). Rates come from settings.HITL_THROTTLE_RATES when a request is
checked, so a changed setting applies at once. If the cache is unreachable the request is let
through and the fault logged: throttling must not take the API down with it."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from hitl.models import Deployment

logger = logging.getLogger(__name__)


class _SettingsRateThrottle(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        return settings.HITL_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request: Request, view: object) -> bool:
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            return super().allow_request(request, view)
        except Exception:
            logger.exception(
                "throttle %s: the cache is unreachable; request let through", self.scope
            )
            return True

    def caller(self, request: Request) -> str | None:
        raise NotImplementedError

    def get_cache_key(self, request: Request, view: object) -> str | None:
        ident = self.caller(request)
        return None if ident is None else self.cache_format % {"scope": self.scope, "ident": ident}


class AnonymousThrottle(_SettingsRateThrottle):
    scope = "anonymous"

    def caller(self, request: Request) -> str | None:
        return self.get_ident(request) if request.user is None else None


class UserThrottle(_SettingsRateThrottle):
    scope = "user"

    def caller(self, request: Request) -> str | None:
        return str(request.user.pk) if isinstance(request.user, AbstractBaseUser) else None


class DeploymentThrottle(_SettingsRateThrottle):
    scope = "deployment"

    def caller(self, request: Request) -> str | None:
        return str(request.user.pk) if isinstance(request.user, Deployment) else None
