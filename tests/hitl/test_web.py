import pytest

from hitl.models import Label, ReviewTask, ReviewTaskStatus
from hitl.services.selection import review_batch_request
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db


@pytest.fixture()
def open_tasks(project, ingest) -> list[ReviewTask]:
    ingest(range(6))
    batch = review_batch_request(project=project, requested_by="t", size=4)
    review_batch_select(batch_id=batch.id)
    return list(batch.tasks.select_related("prediction").order_by("rank"))


def test_pages_need_a_login(client, project) -> None:
    for url in ["/", f"/projects/{project.slug}/review/", f"/projects/{project.slug}/cycles/"]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_review_queue_shows_open_tasks(client, reviewer, project, open_tasks) -> None:
    client.force_login(reviewer)
    page = client.get(f"/projects/{project.slug}/review/").content.decode()
    assert page.count('class="card"') == 4
    assert open_tasks[0].prediction.predicted_label in page
    assert f"/api/v1/items/{open_tasks[0].item_id}/image" in page


def test_accept_correct_and_skip(client, reviewer, project, open_tasks) -> None:
    client.force_login(reviewer)
    accepted, corrected, skipped = open_tasks[:3]
    client.post(f"/review-tasks/{accepted.id}/label", {"value": accepted.prediction.predicted_label, "shown_at": "0"})
    other = next(label for label in project.labels if label != corrected.prediction.predicted_label)
    response = client.post(f"/review-tasks/{corrected.id}/label", {"value": other}, follow=True)
    assert f"Corrected to &#x27;{other}&#x27;" in response.content.decode()
    client.post(f"/review-tasks/{skipped.id}/label", {"action": "skip"})
    labels = {label.item_id: label for label in Label.objects.all()}
    assert labels[accepted.item_id].value == accepted.prediction.predicted_label
    assert labels[accepted.item_id].source == "web" and labels[accepted.item_id].reviewer == reviewer
    assert labels[accepted.item_id].lead_time_seconds is None  # a nonsense shown_at is not recorded
    assert labels[corrected.item_id].value == other
    assert labels[corrected.item_id].prediction_id == corrected.prediction_id
    statuses = dict(ReviewTask.objects.values_list("id", "status"))
    assert statuses[accepted.id] == statuses[corrected.id] == ReviewTaskStatus.DONE
    assert statuses[skipped.id] == ReviewTaskStatus.SKIPPED and skipped.item_id not in labels


def test_an_unknown_label_is_an_error_message(client, reviewer, open_tasks) -> None:
    client.force_login(reviewer)
    response = client.post(f"/review-tasks/{open_tasks[0].id}/label", {"value": "zebra"}, follow=True)
    assert "unknown label &#x27;zebra&#x27;" in response.content.decode()
    assert not Label.objects.exists()
