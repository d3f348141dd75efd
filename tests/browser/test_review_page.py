"""The reviewer pages in a real headless Chromium against a live server."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from hitl.models import Label
from hitl.services.cycles import cycle_request
from hitl.services.selection import review_batch_request
from workers.pipelines.cycles import cycle_evaluate, cycle_train
from workers.pipelines.selection import review_batch_select

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
def login(page: Page, live_server, username: str, password: str) -> None:
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_reviewer_accepts_and_corrects_in_the_browser(page, live_server, project, reviewer, ingest) -> None:
    ingest(range(5))
    batch = review_batch_request(project=project, requested_by="t", size=3, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    tasks = list(batch.tasks.select_related("prediction").order_by("rank"))

    login(page, live_server, "rita", "rita-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/review/")
    cards = page.locator(".card[data-task]")
    expect(cards).to_have_count(3)
    first_image = cards.nth(0).locator("img")
    expect(first_image).to_be_visible()
    assert page.evaluate("img => img.naturalWidth", first_image.element_handle()) == 28  # the real image loaded

    page.locator(f'.card[data-task="{tasks[0].id}"] button.accept').click()
    expect(page.locator(".messages li.success")).to_contain_text(f"Accepted '{tasks[0].prediction.predicted_label}'")
    other = next(label for label in project.labels if label != tasks[1].prediction.predicted_label)
    card = page.locator(f'.card[data-task="{tasks[1].id}"]')
    card.locator("select[name=value]").select_option(other)
    card.locator("button.correct").click()
    expect(page.locator(".messages li.success")).to_contain_text(f"Corrected to '{other}'")
    expect(page.locator(".card[data-task]")).to_have_count(1)

    labels = {label.item_id: label for label in Label.objects.filter(source="web")}
    assert labels[tasks[0].item_id].value == tasks[0].prediction.predicted_label
    assert labels[tasks[1].item_id].value == other
    assert labels[tasks[1].item_id].reviewer_name == "rita"
    assert 0 <= labels[tasks[1].item_id].lead_time_seconds < 60


def test_cycles_page_shows_snapshots(page, live_server, project, reviewer, labeled_items) -> None:
    labeled_items(range(80))
    project.gate_rules = {"first_model_needs_golden_set": False}  # a first model, no golden set yet
    project.save()
    cycle = cycle_request(project=project, requested_by="t")
    cycle_train(cycle_id=cycle.id)
    cycle_evaluate(cycle_id=cycle.id)
    cycle.refresh_from_db()

    login(page, live_server, "rita", "rita-pass-123")
    page.goto(f"{live_server.url}/projects/{project.slug}/cycles/")
    row = page.locator("tbody tr").first
    expect(row).to_contain_text("v1")
    expect(row).to_contain_text("promoted")
    snapshot = cycle.snapshots.get()
    expect(row).to_contain_text(f"{snapshot.accuracy:.3f}")
    row.locator("a").first.click()
    expect(page.locator("h1")).to_contain_text(f"Cycle {cycle.number}")
    expect(page.locator("table", has_text="recall").first).to_contain_text("ankle boot")  # per-class table

