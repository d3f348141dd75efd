"""The keyboard-first review page in a real headless Chromium: a batch labeled with the keyboard
alone (accept, number keys, type-to-filter, undo, skip, arrows), no page reload, no script or CSP
error. Screenshots go to test-artifacts/ (HITL_TEST_ARTIFACTS to put them elsewhere)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from hitl.models import Label, LabelStatus, ProjectRole, ReviewTask, ReviewTaskStatus
from hitl.services.selection import review_batch_request
from tests.browser.test_review_page import login
from tests.conftest import artifacts_folder, member
from workers.pipelines.selection import review_batch_select

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


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
    page.screenshot(path=str(artifacts_folder() / "review-page.png"))
    page.set_viewport_size({"width": 800, "height": 1100})  # a tablet: the side panel goes below
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    expect(page.locator("#review-keys")).to_be_in_viewport()
    page.screenshot(path=str(artifacts_folder() / "review-page-tablet.png"))
    page.set_viewport_size({"width": 1280, "height": 800})

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
    page.screenshot(path=str(artifacts_folder() / "review-page-done.png"))
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
    page.screenshot(path=str(artifacts_folder() / "item-page.png"), full_page=True)


def test_two_blind_answers_and_a_conflict_decided_by_a_third_person(page, live_server, project, reviewer,
                                                                   ingest) -> None:
    project.double_label_fraction = 1.0
    project.save(update_fields=["double_label_fraction"])
    member(project, "sam", ProjectRole.REVIEWER)
    member(project, "otto", ProjectRole.ML_ENGINEER)
    ingest(range(3))
    batch = review_batch_request(project=project, requested_by="t", size=2, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    tasks = list(batch.tasks.order_by("rank"))

    def own_page(username: str) -> Page:
        other = page.context.browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        other.set_default_timeout(15_000)
        login(other, live_server, username, f"{username}-pass-123")
        other.goto(f"{live_server.url}/projects/{project.slug}/label/")
        return other

    # sam opens the page while rita holds both items: it has nothing for him, and looks again soon
    pages = {"rita": own_page("rita")}
    shown(pages["rita"], tasks[0])
    pages["sam"] = own_page("sam")
    expect(pages["sam"].locator("#review-empty")).to_be_visible()
    for username, keys, outcomes in [("rita", "23", ["answers it blind", "answers it blind"]),
                                     ("sam", "24", ["blind answers agree", "a third person decides"])]:
        reviewer_page = pages[username]
        # sam's page finds the items when it looks again (every 5 s while it has none)
        expect(reviewer_page.locator("#review")).to_have_attribute("data-task-id", str(tasks[0].id), timeout=15_000)
        for task, key, outcome in zip(tasks, keys, outcomes):
            shown(reviewer_page, task)
            expect(reviewer_page.locator("#review-why")).to_contain_text("two reviewers answer blind")
            reviewer_page.keyboard.press(key)
            expect(reviewer_page.locator("#review-status")).to_contain_text(outcome)
        expect(reviewer_page.locator("#review-empty")).to_be_visible()

    otto = own_page("otto")
    otto.goto(f"{live_server.url}/projects/{project.slug}/conflicts/")
    card = otto.locator(f'.card.conflict[data-task="{tasks[1].id}"]')
    expect(card).to_contain_text("pullover")
    expect(card).to_contain_text("by rita")
    expect(card).to_contain_text("by sam")
    otto.screenshot(path=str(artifacts_folder() / "conflicts-page.png"))
    card.locator("button.decide", has_text="pullover").click()
    expect(otto.locator(".messages li.success")).to_contain_text(f"Decided 'pullover' for item {tasks[1].item_id}")
    expect(otto.locator(".card.conflict")).to_have_count(0)
    otto.goto(f"{live_server.url}/projects/{project.slug}/reviewers/")
    expect(otto.locator("#reviewer-stats tbody tr")).to_have_count(3)
    otto.screenshot(path=str(artifacts_folder() / "reviewers-page.png"))

    labels = {label.item_id: (label.value, label.reviewer_name)
              for label in Label.objects.filter(status=LabelStatus.CURRENT)}
    assert labels == {tasks[0].item_id: ("trouser", "sam"), tasks[1].item_id: ("pullover", "otto")}
