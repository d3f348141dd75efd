"""The keyboard-first review page in a real headless Chromium: a batch labeled with the keyboard
alone (accept, number keys, type-to-filter, undo, skip, arrows), no page reload, no script or CSP
error. Screenshots go to test-artifacts/ (HITL_TEST_ARTIFACTS to put them elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from playwright.sync_api import Page, expect

from hitl.models import Label, LabelStatus, ReviewTask, ReviewTaskStatus
from hitl.services.selection import review_batch_request
from tests.browser.test_review_page import login
from workers.pipelines.selection import review_batch_select

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def artifacts() -> Path:
    folder = Path(os.environ.get("HITL_TEST_ARTIFACTS", Path(settings.BASE_DIR) / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shown(page: Page, task: ReviewTask) -> None:
    """Wait until this task is the one in front of the reviewer, its image loaded."""
    expect(page.locator("#review")).to_have_attribute("data-task-id", str(task.id))
    expect(page.locator("#review")).to_have_attribute("data-loaded-item", f"item {task.item_id}")


def test_a_batch_labeled_with_the_keyboard_alone(page, live_server, project, reviewer, ingest) -> None:
    problems: list[str] = []
    # script errors, CSP refusals and failed requests (the browser's own favicon guess aside)
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("response", lambda response: problems.append(f"{response.status} {response.url}")
            if response.status >= 400 and not response.url.endswith("/favicon.ico") else None)
    ingest(range(5))
    batch = review_batch_request(project=project, requested_by="t", size=5, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    tasks = list(batch.tasks.select_related("prediction").order_by("rank"))
    status = page.locator("#review-status")

    login(page, live_server, "rita", "rita-pass-123")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live_server.url}/projects/{project.slug}/label/")
    page.evaluate("window.sameDocument = true")  # gone if anything reloads the page
    shown(page, tasks[0])
    image = page.locator("#review-image")
    assert page.evaluate("img => [img.naturalWidth, getComputedStyle(img).imageRendering]",
                         image.element_handle()) == [28, "pixelated"]
    assert image.bounding_box()["width"] > 28 * 10  # a 28x28 image is shown large
    expect(page.locator("#review-keys li.predicted")).to_contain_text(tasks[0].prediction.predicted_label)
    expect(page.locator("#review-why")).to_contain_text("strategy")
    expect(page.locator("#review-predicted")).to_have_text(tasks[0].prediction.predicted_label)
    page.screenshot(path=str(artifacts() / "review-page.png"))

    page.keyboard.press("Enter")  # accept the model's label
    expect(status).to_contain_text(f"'{tasks[0].prediction.predicted_label}' for item {tasks[0].item_id}")
    shown(page, tasks[1])
    page.keyboard.press("2")  # trouser
    expect(status).to_contain_text(f"'trouser' for item {tasks[1].item_id}")
    shown(page, tasks[2])
    page.keyboard.press("u")  # undo: the trouser label is withdrawn, its item comes back
    expect(status).to_contain_text(f"Undone: item {tasks[1].item_id}")
    shown(page, tasks[1])
    page.keyboard.type("ank")  # more than nine labels: type to filter
    expect(page.locator("#review-keys li:not([hidden])")).to_have_text(["1 ankle boot"])
    page.keyboard.press("Enter")
    expect(status).to_contain_text(f"'ankle boot' for item {tasks[1].item_id}")
    shown(page, tasks[2])
    page.keyboard.press("s")
    expect(status).to_contain_text(f"Skipped item {tasks[2].item_id}")
    shown(page, tasks[3])
    page.keyboard.press("ArrowRight")
    shown(page, tasks[4])
    page.keyboard.press("1")
    expect(status).to_contain_text(f"'t-shirt/top' for item {tasks[4].item_id}")
    shown(page, tasks[3])
    page.keyboard.press("Enter")
    expect(status).to_contain_text(f"'{tasks[3].prediction.predicted_label}' for item {tasks[3].item_id}")
    expect(page.locator("#review-empty")).to_be_visible()
    page.screenshot(path=str(artifacts() / "review-page-done.png"))
    assert page.evaluate("window.sameDocument") is True
    assert problems == []

    current = dict(Label.objects.filter(status=LabelStatus.CURRENT).values_list("item_id", "value"))
    assert current == {tasks[0].item_id: tasks[0].prediction.predicted_label, tasks[1].item_id: "ankle boot",
                       tasks[3].item_id: tasks[3].prediction.predicted_label, tasks[4].item_id: "t-shirt/top"}
    retracted = Label.objects.get(status=LabelStatus.RETRACTED)
    assert (retracted.item_id, retracted.value) == (tasks[1].item_id, "trouser")
    statuses = dict(ReviewTask.objects.values_list("id", "status"))
    assert statuses[tasks[2].id] == ReviewTaskStatus.SKIPPED
    assert [statuses[t.id] for t in tasks if t != tasks[2]] == [ReviewTaskStatus.DONE] * 4
    assert all(label.lead_time_seconds is not None for label in Label.objects.filter(source="web"))

    page.goto(f"{live_server.url}/items/{tasks[1].item_id}/")
    history = page.locator("#item-labels tbody tr")
    expect(history).to_have_count(2)
    expect(history.nth(0)).to_contain_text("trouser")
    expect(history.nth(0)).to_contain_text("Retracted")
    expect(history.nth(1)).to_contain_text("ankle boot")
    expect(page.locator("#item-predictions tbody tr")).to_contain_text(tasks[1].prediction.predicted_label)
    assert page.evaluate("img => img.naturalWidth", page.locator("#item-image").element_handle()) == 28
    page.screenshot(path=str(artifacts() / "item-page.png"), full_page=True)
