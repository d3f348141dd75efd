"""The browser tests' page: a real headless Chromium (Debian's) against the live server."""

from __future__ import annotations

import pytest
from django.db import connections
from playwright.sync_api import Page, sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def page(live_server, monkeypatch) -> Page:
    # Playwright's sync API keeps an event loop in this thread; the ORM calls in the test are
    # still synchronous, so Django's async guard is lifted for these tests only.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(15_000)
        yield page
        browser.close()
        # ORM calls made while Playwright's loop runs get connections of their own: close them.
        connections.close_all()
