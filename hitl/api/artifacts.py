"""What a deployment downloads to run its model: the artifacts of the version it should run
(ONNX, safetensors) and a model card (label map, preprocessing, temperature when calibrated),
each listed with its sha256 and served with it in a header, under the deployment's own token."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import PurePosixPath

from django.http import FileResponse, Http404, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hitl import mlspec
from hitl.api.permissions import IsDeployment
from hitl.media import ImageRejected, model_artifact_file
from hitl.models import Deployment, ModelArtifact, ModelVersion
from hitl.services.projects import checkpoint_meta_from_file

log = logging.getLogger(__name__)
CARD_FILE = "model.json"
SHA256_HEADER = "X-Content-SHA256"


def model_card(version: ModelVersion) -> bytes:
    """Labels in output order, preprocessing and temperature from the checkpoint's header, as
    canonical JSON (sorted keys), so its sha256 is stable."""
    weights = ModelArtifact.objects.get(model_version=version, kind="weights")
    try:
        with model_artifact_file(weights.path) as handle:
            meta = checkpoint_meta_from_file(handle, weights.path)
    except (ImageRejected, FileNotFoundError) as exc:
        log.warning("model artifact %s of %s refused: %s", weights.path, version.name, exc)
        raise Http404(f"{version.name}'s model card is not available") from None
    card = {"model_version": version.name, "architecture": version.architecture, "labels": meta["labels"],
            "preprocessing": {**meta["input_spec"], "resize": "shorter side to size, then centre crop",
                              "scale": "pixel / 255, then (x - mean) / std per channel"},
            "onnx": {"input": "image [batch, channels, size, size] float32", "output": "logits [batch, classes]"}}
    temperature = meta.get("temperature", meta.get("metrics", {}).get("temperature"))
    if temperature is not None:
        card["temperature"] = temperature  # divide the logits by it before softmax
    return json.dumps(card, sort_keys=True, separators=(",", ":")).encode()


def _listing(deployment: Deployment) -> dict:
    version = deployment.model_version
    card = model_card(version)
    files = [{"name": PurePosixPath(a.path).name, "kind": a.kind, "sha256": a.sha256, "size": a.size_bytes}
             for a in version.artifacts.order_by("kind")]
    files.append({"name": CARD_FILE, "kind": "card", "sha256": hashlib.sha256(card).hexdigest(), "size": len(card)})
    return {"deployment": deployment.name, "model_version": version.name, "files": files}


class DeploymentModelView(APIView):
    """The version this deployment should run and its files with their sha256."""

    permission_classes = (IsDeployment,)

    @extend_schema(operation_id="deployment_model_list", responses={200: {"type": "object"}})
    def get(self, request: Request) -> Response:
        return Response(_listing(request.user))


class DeploymentModelFileView(APIView):
    """One file of the deployment's model version; its sha256 is in the X-Content-SHA256 header."""

    permission_classes = (IsDeployment,)

    @extend_schema(operation_id="deployment_model_file", responses={200: {"type": "string", "format": "binary"}})
    def get(self, request: Request, name: str) -> HttpResponse:
        version = request.user.model_version
        if name == CARD_FILE:
            card = model_card(version)
            response = HttpResponse(card, content_type="application/json")
            response[SHA256_HEADER] = hashlib.sha256(card).hexdigest()
            return response
        kinds = {mlspec.ONNX_FILE: "onnx", mlspec.WEIGHTS_FILE: "weights"}
        artifact = ModelArtifact.objects.filter(model_version=version, kind=kinds.get(name, "")).first()
        if artifact is None:
            raise Http404(f"{version.name} has no file {name!r}; see the listing at /api/v1/deployment/model/")
        try:
            handle = model_artifact_file(artifact.path)  # FileResponse closes it
        except (ImageRejected, FileNotFoundError) as exc:
            log.warning("model artifact %s of %s refused: %s", artifact.path, version.name, exc)
            raise Http404(f"{version.name}'s file {name!r} is not available") from None
        response = FileResponse(handle, as_attachment=True, filename=name,
                                content_type="application/octet-stream")
        response[SHA256_HEADER] = artifact.sha256
        return response
