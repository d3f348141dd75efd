"""The admin changes plain settings with the same checks as the CLI and the API."""

from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def change_form_data(admin_client, url: str) -> dict:
    context = admin_client.get(url).context
    form = context["adminform"].form
    data = {name: "" if form[name].value() is None else form[name].value() for name in form.fields}
    for inline in context["inline_admin_formsets"]:  # the members inline's management form
        management = inline.formset.management_form
        data.update({f"{management.prefix}-{key}": v for key, v in management.initial.items()})
    return data


def test_project_settings_are_checked(admin_client, project) -> None:
    url = reverse("admin:hitl_project_change", args=[project.id])
    data = change_form_data(admin_client, url)
    refused = admin_client.post(url, {**data, "selection_strategy": "vibes", "mc_samples": 1})
    assert refused.status_code == 200  # the form again, with its errors
    errors = refused.context["adminform"].form.errors
    assert "unknown" in errors["selection_strategy"][0] and "mc_samples" in errors
    project.refresh_from_db()
    assert project.selection_strategy == "margin" and project.mc_samples != 1
    accepted = admin_client.post(url, {**data, "selection_strategy": "entropy"})
    assert accepted.status_code == 302
    project.refresh_from_db()
    assert project.selection_strategy == "entropy"


def test_fixed_settings_are_read_only_and_versions_come_from_services(admin_client, project) -> None:
    form = admin_client.get(reverse("admin:hitl_project_change", args=[project.id])).context["adminform"].form
    assert not {"labels", "holdout_fraction", "task_type"} & set(form.fields)
    assert admin_client.get(reverse("admin:hitl_modelversion_add")).status_code == 403
    assert admin_client.get(reverse("admin:hitl_retrainingcycle_add")).status_code == 403
