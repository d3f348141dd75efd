"""The read and command endpoints of the REST API (ingestion has its own module)."""

from __future__ import annotations

import pytest

from hitl.models import Item, Label, LabelSource, RetrainingCycle
from hitl.services.labels import label_submit
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db


@pytest.fixture()
def item_ids(ingest) -> list[int]:
    return ingest(range(12)).item_ids


def test_openapi_schema_is_served(reviewer_client, client, reviewer) -> None:
    response = reviewer_client.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3")
    assert {"/api/v1/predictions/", "/api/v1/projects/{slug}/cycles/", "/api/v1/items/{id}/labels/"} <= set(schema["paths"])
    client.force_login(reviewer)
    assert client.get("/api/v1/docs/").status_code == 200


def test_projects_and_model_versions(reviewer_client, project, version) -> None:
    projects = reviewer_client.get("/api/v1/projects/").json()["results"]
    assert [p["slug"] for p in projects] == [project.slug]
    assert reviewer_client.get(f"/api/v1/projects/{project.slug}/").json()["labels"] == project.labels
    versions = reviewer_client.get(f"/api/v1/projects/{project.slug}/model-versions/").json()["results"]
    assert versions[0]["name"] == "v1" and versions[0]["stage"] == "production"
    assert versions[0]["artifacts"][0]["sha256"] and versions[0]["artifacts"][0]["kind"] == "weights"
    assert reviewer_client.get("/api/v1/projects/nope/").status_code == 404


def test_items_and_predictions_lists(reviewer_client, project, item_ids, reviewer) -> None:
    label_submit(item_id=item_ids[0], value="bag", source=LabelSource.WEB, reviewer=reviewer)
    items = reviewer_client.get(f"/api/v1/projects/{project.slug}/items/").json()["results"]
    assert len(items) == 12
    labeled = reviewer_client.get(f"/api/v1/projects/{project.slug}/items/?labeled=true").json()["results"]
    assert [i["id"] for i in labeled] == [item_ids[0]]
    bad = reviewer_client.get(f"/api/v1/projects/{project.slug}/items/?labeled=maybe")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "labeled"
    predictions = reviewer_client.get(
        f"/api/v1/projects/{project.slug}/predictions/?item={item_ids[3]}&model_version=v1").json()["results"]
    assert len(predictions) == 1 and len(predictions[0]["probabilities"]) == 10
    assert predictions[0]["deployment"] == "edge-1"


def test_label_submission_and_history(reviewer_client, item_ids) -> None:
    train_item = Item.objects.filter(pk__in=item_ids, split="train").order_by("pk").first()
    url = f"/api/v1/items/{train_item.pk}/labels/"
    assert reviewer_client.post(url, {"value": "coat"}, format="json").status_code == 201
    response = reviewer_client.post(url, {"value": "shirt", "lead_time_seconds": 4.5}, format="json")
    assert response.status_code == 201 and response.json()["source"] == "api"
    history = reviewer_client.get(url).json()["results"]
    assert [(h["value"], h["status"]) for h in history] == [("coat", "superseded"), ("shirt", "current")]
    bad = reviewer_client.post(url, {"value": "zebra"}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "value"
    assert reviewer_client.post(url, {}, format="json").json()["errors"][0]["field"] == "value"
    assert reviewer_client.post("/api/v1/items/999999/labels/", {"value": "coat"}, format="json").status_code == 404
    assert Label.objects.count() == 2


def test_review_queue_and_batches(operator_client, reviewer_client, project, item_ids) -> None:
    url = f"/api/v1/projects/{project.slug}/review-batches/"
    assert reviewer_client.post(url, {"size": 4}, format="json").status_code == 403
    bad = operator_client.post(url, {"size": 0}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "size"
    response = operator_client.post(url, {"size": 4, "strategy": "entropy", "audit_fraction": 0.25}, format="json")
    assert response.status_code == 202 and response.json()["status"] == "pending"
    review_batch_select(batch_id=response.json()["id"])
    queue = reviewer_client.get(f"/api/v1/projects/{project.slug}/review-queue/").json()["results"]
    assert len(queue) == 4 and queue[0]["rank"] == 1 and queue[0]["predicted_label"]
    image = reviewer_client.get(queue[0]["image_url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    batch = reviewer_client.get(f"/api/v1/review-batches/{response.json()['id']}/").json()
    assert batch["status"] == "selected" and batch["tasks"] == 4 and batch["model_version"] == "v1"


def test_cycles_endpoints(operator_client, reviewer_client, project) -> None:
    url = f"/api/v1/projects/{project.slug}/cycles/"
    assert reviewer_client.post(url, {}, format="json").status_code == 403
    bad = operator_client.post(url, {"train_config": {"epochs": -1}}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "train_config.epochs"
    created = operator_client.post(url, {"train_config": {"epochs": 3}}, format="json")
    assert created.status_code == 202 and created.json()["train_config"]["epochs"] == 3
    conflict = operator_client.post(url, {}, format="json")
    assert conflict.status_code == 409 and "still pending" in conflict.json()["detail"]
    listed = reviewer_client.get(url).json()["results"]
    assert [c["number"] for c in listed] == [1]
    cycle_id = created.json()["id"]
    assert operator_client.post(f"/api/v1/cycles/{cycle_id}/cancel/").json()["status"] == "cancelled"
    assert operator_client.post(f"/api/v1/cycles/{cycle_id}/cancel/").status_code == 409
    assert RetrainingCycle.objects.get(pk=cycle_id).finished_at is not None


def test_trust_history_endpoint(reviewer_client, project, version) -> None:
    data = reviewer_client.get(f"/api/v1/projects/{project.slug}/trust/").json()
    assert data["verified"] is True and data["count"] == 1
    assert [e["kind"] for e in data["results"]] == ["model_promoted"]
    assert data["head_hash"] == data["results"][-1]["hash"]


def test_unauthenticated_reads_are_refused(client, project) -> None:
    response = client.get("/api/v1/projects/")
    assert response.status_code == 401 and response.json()["errors"]



def test_project_admins_change_project_settings(project_admin_client, operator_client, project) -> None:
    url = f"/api/v1/projects/{project.slug}/"
    changes = {"selection_strategy": "bald", "batch_size": 250, "audit_fraction": 0.2, "mc_samples": 30,
               "class_balance": True}
    assert operator_client.patch(url, changes, format="json").status_code == 403
    response = project_admin_client.patch(url, changes, format="json")
    assert response.status_code == 200 and {k: response.json()[k] for k in changes} == changes
    project.refresh_from_db()
    assert (project.selection_strategy, project.mc_samples) == ("bald", 30)
    bad = project_admin_client.patch(url, {"selection_strategy": "vibes", "mc_samples": 1, "labels": ["a", "b"],
                                           "colour": "red"}, format="json")
    assert bad.status_code == 400
    assert sorted(e["field"] for e in bad.json()["errors"]) == ["labels"]
    bad = project_admin_client.patch(url, {"selection_strategy": "vibes", "mc_samples": 1, "colour": "red",
                                           "train_config": {"epochs": 0}}, format="json")
    assert sorted(e["field"] for e in bad.json()["errors"]) == [
        "colour", "mc_samples", "selection_strategy", "train_config.epochs"]
    project.refresh_from_db()
    assert project.selection_strategy == "bald"  # nothing of a bad request is applied


def test_odd_input_is_a_4xx_not_a_500(reviewer_client, operator_client, project, item_ids, media_root) -> None:
    assert reviewer_client.get(f"/api/v1/projects/{project.slug}/predictions/?item=²").status_code == 400
    response = operator_client.post(f"/api/v1/projects/{project.slug}/review-batches/", {"seed": 2**70}, format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "seed"
    item = Item.objects.get(pk=item_ids[0])
    (media_root / item.image).unlink()
    response = reviewer_client.get(f"/api/v1/items/{item.pk}/image")
    assert response.status_code == 404 and "missing from storage" in response.json()["detail"]
