"""The workbench pages in a real headless Chromium: the cycle page, the models page, the trust
page and the dashboard of a project with two trained cycles. Each chart must have drawn (a Chart.js
instance on its canvas, and non-blank pixels), at 1280x800 and at a tablet's 800 px without
sideways scrolling; a screenshot of each page is saved under test-artifacts/ (HITL_TEST_ARTIFACTS)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone
from playwright.sync_api import Page, expect, sync_playwright

from hitl.models import (
    CycleStatus,
    ModelStage,
    ModelVersion,
    MonitorWindow,
    ProjectRole,
    RetrainingCycle,
)
from hitl.services.cycles import cycle_progress_record, cycle_training_start
from hitl.services.projects import deployment_create
from tests.browser.conftest import CHROMIUM_ARGS
from tests.browser.test_review_page import login
from tests.conftest import artifacts_folder, member
from tests.workbench import trained_cycles

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "tablet": {"width": 800, "height": 1100}}

# For every chart on the page: its kind, whether Chart.js made it, and how many pixels it painted.
CHARTS_DRAWN = """() => [...document.querySelectorAll('canvas[data-chart]')].map((canvas) => {
  const chart = canvas.hitlChart;
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
  return {id: canvas.id, kind: canvas.dataset.kind, type: chart ? chart.config.type : null,
          points: chart ? chart.data.datasets.reduce((n, d) => n + d.data.length, 0) : 0,
          painted: painted / (canvas.width * canvas.height), width: canvas.clientWidth};
})"""


@pytest.fixture()
def browser(live_server, monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # see test_review_page.page
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
        connections.close_all()


def open_page(browser, viewport: str) -> Page:
    page = browser.new_page(viewport=VIEWPORTS[viewport])
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("response", lambda r: r.status >= 400 and errors.append(f"{r.status} {r.url}"))
    page.errors = errors
    return page


def check_charts(page: Page, url: str, name: str, viewport: str, expected: set[str]) -> list[dict]:
    page.goto(url)
    page.wait_for_function("() => [...document.querySelectorAll('canvas[data-chart]')].every(c => c.hitlChart)")
    charts = page.evaluate(CHARTS_DRAWN)
    assert {c["kind"] for c in charts} >= expected, charts
    for chart in charts:
        assert chart["type"] is not None, chart
        assert chart["points"] > 0 and chart["painted"] > 0.005, chart  # drawn, not a blank canvas
        assert chart["width"] <= VIEWPORTS[viewport]["width"], chart
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at {viewport} width"
    assert page.errors == [], page.errors
    page.screenshot(path=str(artifacts_folder() / f"{name}-{viewport}.png"), full_page=True)
    return charts


def test_workbench_pages_draw_their_charts(browser, live_server, project, labeled_items) -> None:
    first, second = trained_cycles(project, labeled_items)
    member(project, "otto", ProjectRole.ML_ENGINEER)
    deployment, _ = deployment_create(project=project, name="line-3", environment="edge",
                                      model_version=first.candidate_version, storage_prefix="line-3")
    start = timezone.now() - timedelta(hours=4)
    for hour, psi in enumerate([0.02, 0.03, 0.41, 0.55]):  # the class mix drifts in the last two windows
        MonitorWindow.objects.create(project=project, deployment=deployment, model_version=first.candidate_version,
                                     window_start=start + timedelta(hours=hour),
                                     window_end=start + timedelta(hours=hour + 1), n_predictions=200,
                                     metrics={"judged": True, "class_psi": psi, "confidence_psi": psi / 3})
    base = live_server.url
    for viewport in VIEWPORTS:
        page = open_page(browser, viewport)
        login(page, live_server, "otto", "otto-pass-123")
        charts = check_charts(page, f"{base}/cycles/{second.pk}/", "cycle", viewport,
                              {"heatmap", "recall", "reliability", "deltas", "loss"})
        heatmaps = [c for c in charts if c["kind"] == "heatmap"]
        assert len(heatmaps) == second.snapshots.count() and all(c["type"] == "matrix" for c in heatmaps)
        assert all(c["points"] == 100 for c in heatmaps)  # 10 x 10 cells
        reliability = next(c for c in charts if c["kind"] == "reliability")
        assert reliability["points"] > 2 + 10  # the diagonal, bins before and after the temperature, golden
        expect(page.locator("#gate-rules")).to_contain_text("non_inferiority")
        check_charts(page, f"{base}/projects/{project.slug}/trust/", "trust", viewport, {"overTime"})
        expect(page.locator("#chain-check")).to_contain_text("verified")
        check_charts(page, f"{base}/projects/{project.slug}/", "dashboard", viewport, {"overTime", "sparkline"})
        expect(page.locator("#last-cycle")).to_contain_text("awaiting_approval")
        check_charts(page, f"{base}/projects/{project.slug}/models/", "models", viewport, set())

    # approve from the models page, as a person would
    row = page.locator('tr[data-model="v2"]')
    row.locator("input[name=reason]").fill("snapshot pictures checked")
    row.locator("button[value=approve]").click()
    expect(page.locator(".messages li.success")).to_contain_text("approved by otto")
    assert ModelVersion.objects.get(pk=second.candidate_version_id).stage == ModelStage.PRODUCTION
    expect(page.locator('tr[data-model="v1"] form.rollback')).to_be_visible()


def test_cycle_page_follows_training_live_and_cancels(browser, live_server, project, labeled_items) -> None:
    labeled_items(range(10))
    cycle = RetrainingCycle.objects.create(project=project, number=1, requested_by="t", train_config={"epochs": 5})
    cycle_training_start(cycle_id=cycle.id)
    cycle_progress_record(cycle_id=cycle.id, epoch=1, epochs=5, train_loss=2.1, train_accuracy=0.2)
    member(project, "otto", ProjectRole.ML_ENGINEER)
    page = open_page(browser, "desktop")
    login(page, live_server, "otto", "otto-pass-123")
    page.goto(f"{live_server.url}/cycles/{cycle.pk}/")
    box = page.locator("#cycle-progress")
    expect(box.locator('[data-field="epoch"]')).to_have_text("1 / 5")

    cycle_progress_record(cycle_id=cycle.id, epoch=2, epochs=5, train_loss=1.4, train_accuracy=0.4)
    expect(box.locator('[data-field="epoch"]')).to_have_text("2 / 5")  # polled, no reload
    expect(box.locator('[data-field="loss"]')).to_have_text("1.4000")
    expect(box.locator('[data-field="eta"]')).not_to_have_text("—")
    assert page.evaluate("() => document.querySelector('#chart-loss').hitlChart.data.labels") == [1, 2]
    page.screenshot(path=str(artifacts_folder() / "cycle-training-desktop.png"), full_page=True)

    page.locator("#cancel-cycle button").click()
    expect(page.locator(".messages li.success")).to_contain_text("Cycle 1 cancelled.")
    assert RetrainingCycle.objects.get(pk=cycle.pk).status == CycleStatus.CANCELLED
    assert page.errors == [], page.errors
