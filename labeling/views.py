"""The webhook receiver and signed image URLs. The receiver only verifies, records and hands the
work to Celery, so it answers far inside Label Studio's 1 s timeout."""

from __future__ import annotations

import hmac

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from hitl.api.parsers import parse_json_body
from hitl.errors import InvalidInput
from hitl.media import image_response
from hitl.models import Item
from labeling.services.links import WEBHOOK_HEADER, image_signature_check, webhook_secret
from labeling.services.pull import MalformedEvent, webhook_event_record


@csrf_exempt
@require_POST
def webhook(request: HttpRequest) -> HttpResponse:
    given = request.headers.get(WEBHOOK_HEADER, "")
    if not hmac.compare_digest(given.encode(), webhook_secret().encode()):
        return JsonResponse({"detail": f"missing or wrong {WEBHOOK_HEADER} header"}, status=403)
    try:
        event = webhook_event_record(payload=parse_json_body(request))
    except InvalidInput as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
    except MalformedEvent as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
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
