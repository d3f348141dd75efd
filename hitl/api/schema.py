"""The OpenAPI schema says what the API answers: the deployment token scheme, and the error
responses every operation can give, in the one error shape (hitl.api.errors)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse

from hitl.api.serializers import ErrorSerializer

ERRORS = {
    "400": "bad input: the errors name each field and what to fix",
    "401": "no or unknown credentials",
    "403": "these credentials may not do this",
    "404": "no such object (or not visible to these credentials)",
    "413": "the body is over HITL_MAX_REQUEST_BYTES (refused before it is read)",
    "429": "too many requests; see Retry-After",
    "503": "the database is briefly unavailable or refused the work under contention; retry after Retry-After",
}
ERRORS_WITH_BODY = {
    "409": "the request does not fit the object's current state",
    "415": "the body's Content-Type is not one this operation reads",
}


class DeploymentTokenScheme(OpenApiAuthenticationExtension):
    target_class = "hitl.api.authentication.DeploymentTokenAuthentication"
    name = "deploymentToken"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "a deployment's token: `Deployment <token>`",
        }


class HitlAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        errors = {**ERRORS, **(ERRORS_WITH_BODY if self.method in {"POST", "PUT", "PATCH"} else {})}
        for code, description in errors.items():
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=description),
                    code,
                    direction=direction,
                )
        return responses
