"""The webhook receiver and signed image URLs. The receiver only verifies, records and hands the
work to Celery, so it answers far inside Label Studio's 1 s timeout. The secret of the link named
by the URL is checked before the body is read."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from hitl.media import image_response
from hitl.models import Item
from labeling.services.links import image_signature_check
from labeling.services.webhooks import (
    WEBHOOK_HEADER,
    WebhookRefused,
    webhook_accept,
    webhook_authenticate,
)


@csrf_exempt
@require_POST
def webhook(request: HttpRequest, link_id: int) -> HttpResponse:
    remote = request.META.get("REMOTE_ADDR", "")
    try:
        link = webhook_authenticate(link_id=link_id, secret=request.headers.get(WEBHOOK_HEADER, ""), remote=remote)
        event = webhook_accept(link=link, body=request.body, remote=remote)
    except WebhookRefused as exc:
        return JsonResponse({"detail": exc.detail}, status=exc.status)
    if event is None:
        return JsonResponse({"detail": "action not handled; nothing stored"}, status=200)
    return JsonResponse({"event": event.id}, status=202)


@require_GET
def image(request: HttpRequest, item_id: int, signature: str) -> HttpResponse:
    """The URL is the capability: no session, a signature bound to the item, its content and its
    project, that expires. Unknown items and bad signatures look alike (403)."""
    item = Item.objects.filter(pk=item_id).first()
    problem = image_signature_check(item, signature) if item else "bad signature for this image"
    if problem:
        return JsonResponse({"detail": problem}, status=403)
    response = image_response(request, item)
    if response.status_code == 200:
        response["Cache-Control"] = "private, max-age=3600"
    return response
