"""The gate as rules on the golden set, snapshots with intervals, approval, rejection, rollback
and explain, on real cycles (small_cnn, one or two epochs, real Fashion-MNIST images)."""

from __future__ import annotations

import dataclasses
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from hitl import mlspec
from hitl.errors import Conflict
from hitl.models import (
    CycleDecision,
    CycleStatus,
    Deployment,
    Environment,
    EvaluationSet,
    GoldenItem,
    Label,
    LabelSource,
    LabelStatus,
    ModelStage,
    ModelVersion,
    ProjectRole,
    TrustEvent,
)
from hitl.services.cycles import cycle_cancel, cycle_request
from hitl.services.golden import golden_set_freeze
from hitl.services.labels import label_submit
from hitl.services.projects import deployment_create
from hitl.services.trust import trust_verify
from tests.conftest import member, token_client
from workers.ml.gate import GateRules
from workers.pipelines.cycles import cycle_evaluate, cycle_train

pytestmark = pytest.mark.django_db


@pytest.fixture()
def golden_project(project, labeled_items):
    """150 labeled Fashion-MNIST items; 45 of them (drawn before any model) form golden set v1."""
    ids = labeled_items(range(150))
    golden = ids[::3][:45]
    GoldenItem.objects.bulk_create([GoldenItem(project=project, item_id=i, source="golden") for i in golden])
    for label in Label.objects.filter(item_id__in=golden, status=LabelStatus.CURRENT):  # reviewed, as golden labels are
        label_submit(item_id=label.item_id, value=label.value, source=LabelSource.SIMULATED, reviewer_name="reviewer")
    golden_set_freeze(project=project, actor="test", reason="fixture")
    return project


def run_cycle(project, rules: dict, **config):
    project.gate_rules = rules
    project.save(update_fields=["gate_rules"])
    cycle = cycle_request(project=project, requested_by="test", train_config={"epochs": 2, **config})
    cycle_train(cycle_id=cycle.id)
    cycle_evaluate(cycle_id=cycle.id)
    cycle.refresh_from_db()
    return cycle


def rules_of(cycle) -> dict[str, dict]:
    return {r["rule"]: r for r in cycle.gate["rules"]}


def test_gate_settings_agree_with_workers_ml() -> None:
    fields = {f.name: f for f in dataclasses.fields(GateRules)}
    assert list(mlspec.GATE_RULES) == list(fields)
    defaults = GateRules()
    assert mlspec.gate_rules_clean({}) == dataclasses.asdict(defaults)
    for name, option in mlspec.GATE_RULES.items():
        if option.low is not None and option.kind in (int, float):  # the bounds the web accepts, GateRules takes
            GateRules.from_dict({name: option.kind(option.low)})
            GateRules.from_dict({name: option.kind(option.high)})


def test_bad_gate_rules_are_refused_by_the_api_and_the_command(project, project_admin_client) -> None:
    url = f"/api/v1/projects/{project.slug}/"
    response = project_admin_client.patch(url, {"gate_rules": {"min_golden_size": 0, "speed": 1,
                                                               "critical_recall": {"coat": 2}}}, format="json")
    assert response.status_code == 400
    text = str(response.json())
    assert "gate_rules.min_golden_size" in text and "gate_rules.speed" in text and "gate_rules.critical_recall" in text
    project.refresh_from_db()
    assert project.gate_rules == {}
    response = project_admin_client.patch(url, {"gate_rules": {"min_golden_size": 50, "require_approval": True}},
                                          format="json")
    assert response.status_code == 200 and response.json()["gate_rules"]["min_golden_size"] == 50
    with pytest.raises(CommandError, match="gate_rules.max_ece"):
        call_command("hitl", "configure-project", "--project", project.slug, "--gate-rules", '{"max_ece": 3}')
    call_command("hitl", "configure-project", "--project", project.slug, "--gate-rules", '{"max_ece": 0.2}',
                 stdout=StringIO())
    project.refresh_from_db()
    assert project.gate_rules == {"max_ece": 0.2}


def test_a_first_model_without_a_golden_set_is_not_promoted_by_default(project, labeled_items) -> None:
    labeled_items(range(60))
    cycle = run_cycle(project, {}, epochs=1)
    assert cycle.decision == CycleDecision.REJECTED
    assert rules_of(cycle)["min_golden_size"]["passed"] is False and cycle.gate["golden_set_version"] is None
    assert not ModelVersion.objects.filter(stage=ModelStage.PRODUCTION).exists()


def test_gate_rules_snapshots_approval_rejection_rollback_and_explain(golden_project, operator_client) -> None:
    project = golden_project
    labels = list(project.labels)

    # 1. first model: judged on the golden set only by its size
    first = run_cycle(project, {"min_golden_size": 40})
    assert first.decision == CycleDecision.PROMOTED and set(rules_of(first)) == {"min_golden_size"}
    assert rules_of(first)["min_golden_size"]["inputs"] == {"n": 45, "minimum": 40}
    snapshots = {s.eval_set: s for s in first.snapshots.all()}
    assert set(snapshots) == {EvaluationSet.GOLDEN, EvaluationSet.HARD_CASES}
    golden = snapshots[EvaluationSet.GOLDEN]
    assert golden.golden_set.version == 1 and golden.n_items == 45
    assert not set(golden.label_ids) & set(snapshots[EvaluationSet.HARD_CASES].label_ids)
    accuracy = golden.intervals["accuracy"]
    assert accuracy["lower"] <= golden.accuracy == accuracy["estimate"] <= accuracy["upper"]
    assert accuracy["upper"] - accuracy["lower"] > 0.05  # 45 items: a wide interval, shown as such
    assert set(golden.intervals["per_class_recall"]) == set(labels) and "lower" in golden.intervals["macro_f1"]
    v1 = first.candidate_version
    follower, _ = deployment_create(project=project, name="edge", environment=Environment.EDGE, model_version=v1,
                                    storage_prefix="edge")
    pinned, _ = deployment_create(project=project, name="lab", environment=Environment.CLOUD, model_version=v1,
                                  follows_production=False, storage_prefix="lab")

    # 2. a wrecked candidate (learning rate 1.0) against strict rules: every rule is reported
    strict = {"min_golden_size": 40, "non_inferiority_margin": 0.0, "require_superiority": True,
              "critical_recall": {label: 0.99 for label in labels}, "max_ece": 0.0}
    second = run_cycle(project, strict, learning_rate=1.0)
    rules = rules_of(second)
    assert second.decision == CycleDecision.REJECTED and second.candidate_version.stage == ModelStage.ARCHIVED
    assert set(rules) == {"min_golden_size", "non_inferiority", "superiority", "calibration"} | {
        f"recall_floor:{label}" for label in labels}
    assert rules["min_golden_size"]["passed"] and not rules["calibration"]["passed"]
    assert not rules["superiority"]["passed"]
    assert not all(rules[f"recall_floor:{label}"]["passed"] for label in labels)
    difference = rules["non_inferiority"]["inputs"]["difference"]
    assert rules["non_inferiority"]["passed"] == (difference["lower"] > 0)
    candidate_golden = second.snapshots.get(role="candidate", eval_set=EvaluationSet.GOLDEN)
    assert candidate_golden.intervals["versus_production"]["accuracy_difference"] == difference
    assert second.gate["golden_set_version"] == 1
    assert second.gate["label_manifest_sha256"] == candidate_golden.eval_set_sha256
    gate_event = TrustEvent.objects.filter(project=project, kind="gate_evaluated").order_by("-sequence").first()
    assert gate_event.payload["rules"] == second.gate["rules"] and gate_event.payload["golden_set_version"] == 1
    assert gate_event.payload["label_manifest_sha256"] == candidate_golden.eval_set_sha256

    # 3. a passing candidate waits for a person
    third = run_cycle(project, {"min_golden_size": 40, "non_inferiority_margin": 0.5, "require_approval": True},
                      epochs=1)
    assert third.status == CycleStatus.AWAITING_APPROVAL and third.decision == CycleDecision.AWAITING_APPROVAL
    assert all(r["passed"] for r in third.gate["rules"]) and third.candidate_version.stage == ModelStage.CANDIDATE
    with pytest.raises(Conflict, match="still awaiting_approval"):
        cycle_request(project=project, requested_by="test")
    url = f"/api/v1/cycles/{third.id}/approve/"
    viewer = token_client(member(project, "vic", ProjectRole.VIEWER))
    reviewer = token_client(member(project, "rex", ProjectRole.REVIEWER))
    stranger_project = type(project).objects.create(slug=f"{project.slug}-x", name="x", labels=labels)
    stranger = token_client(member(stranger_project, "sam", ProjectRole.ADMIN))
    assert viewer.post(url, {"reason": "ok"}, format="json").status_code == 403
    assert reviewer.post(url, {"reason": "ok"}, format="json").status_code == 403
    assert stranger.post(url, {"reason": "ok"}, format="json").status_code == 404
    response = operator_client.post(url, {}, format="json")
    assert response.status_code == 400 and "reason" in str(response.json())
    third.refresh_from_db()
    assert third.status == CycleStatus.AWAITING_APPROVAL
    response = operator_client.post(url, {"reason": "rule table checked"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["decision"] == "promoted" and response.json()["decided_by"] == "otto"
    v3 = ModelVersion.objects.get(pk=third.candidate_version_id)
    assert v3.stage == ModelStage.PRODUCTION and v3.promoted_by == "otto"
    assert Deployment.objects.get(pk=follower.pk).model_version == v3
    assert Deployment.objects.get(pk=pinned.pk).model_version == v1
    approved = TrustEvent.objects.get(project=project, kind="cycle_approved")
    assert approved.payload["approver"] == "otto" and approved.payload["golden_set_version"] == 1
    assert operator_client.post(url, {"reason": "twice"}, format="json").status_code == 409

    # 4. roll back to v1: production and the following deployment switch, the trust history says so
    rollback = f"/api/v1/projects/{project.slug}/rollback/"
    assert viewer.post(rollback, {"model_version": "v1", "reason": "r"}, format="json").status_code == 403
    assert stranger.post(rollback, {"model_version": "v1", "reason": "r"}, format="json").status_code == 404
    response = operator_client.post(rollback, {"model_version": "v2", "reason": "r"}, format="json")
    assert response.status_code == 400 and "never served in production" in str(response.json())
    response = operator_client.post(rollback, {"model_version": "v1", "reason": "v3 misbehaves on site"}, format="json")
    assert response.status_code == 200 and response.json()["stage"] == "production"
    assert ModelVersion.objects.get(pk=v1.pk).stage == ModelStage.PRODUCTION
    assert ModelVersion.objects.get(pk=v3.pk).stage == ModelStage.ARCHIVED
    assert Deployment.objects.get(pk=follower.pk).model_version_id == v1.pk
    event = TrustEvent.objects.get(project=project, kind="model_rolled_back")
    assert event.payload == {"model_version": "v1", "replaced": "v3", "reason": "v3 misbehaves on site"}
    assert event.actor == "otto"
    assert operator_client.post(rollback, {"model_version": "v1", "reason": "r"}, format="json").status_code == 409

    # 5. another waiting candidate is rejected by a person
    fourth = run_cycle(project, {"min_golden_size": 40, "non_inferiority_margin": 0.5, "require_approval": True},
                       epochs=1)
    assert fourth.status == CycleStatus.AWAITING_APPROVAL
    assert viewer.post(f"/api/v1/cycles/{fourth.id}/reject/", {"reason": "no"}, format="json").status_code == 403
    response = operator_client.post(f"/api/v1/cycles/{fourth.id}/reject/", {"reason": "not now"}, format="json")
    assert response.status_code == 200 and response.json()["decision"] == "rejected"
    assert ModelVersion.objects.get(pk=fourth.candidate_version_id).stage == ModelStage.ARCHIVED
    assert ModelVersion.objects.get(pk=v1.pk).stage == ModelStage.PRODUCTION

    # 6. explain v3: parents, labels and their sources, evaluations with intervals, who promoted it
    response = viewer.get(f"/api/v1/projects/{project.slug}/model-versions/v3/explain/")
    assert response.status_code == 200
    e = response.json()
    assert [p["name"] for p in e["parents"]] == ["v1"]
    trained = v3.training_labels.count()
    assert e["training_labels"]["count"] == trained == e["labels"]["count"] and trained > 50
    assert e["training_labels"]["by_source"] == {"import": trained}
    assert e["training_labels"]["manifest_matches_trust_history"] is True
    assert len(e["labels"]["results"]) == min(100, trained) and e["labels"]["results"][0]["source"] == "import"
    assert not {r["item"] for r in e["labels"]["results"]} & set(GoldenItem.objects.values_list("item_id", flat=True))
    assert {(s["role"], s["eval_set"]) for s in e["evaluations"]} == {("candidate", "golden"), ("candidate", "hard_cases")}
    assert e["evaluations"][0]["intervals"]["accuracy"]["lower"] <= e["evaluations"][0]["accuracy"]
    assert e["produced_by_cycle"]["decided_by"] == "otto"
    kinds = [t["kind"] for t in e["trust_events"]]
    assert {"model_trained", "gate_evaluated", "cycle_approved", "model_promoted"} <= set(kinds)
    assert stranger.get(f"/api/v1/projects/{project.slug}/model-versions/v3/explain/").status_code == 404
    assert viewer.get(f"/api/v1/projects/{project.slug}/model-versions/nope/explain/").status_code == 404
    out = StringIO()
    call_command("hitl", "explain", "--project", project.slug, "--model", "v3", stdout=out)
    text = out.getvalue()
    assert f"learned from {trained} labels; by source import: {trained}" in text
    assert "(matches the trust history)" in text and "rule non_inferiority" in text and "cycle_approved" in text

    # 7. the trust history still verifies after all of it
    assert trust_verify(project_id=project.id).ok


def test_approve_reject_and_rollback_commands_check_the_role(golden_project, operator) -> None:
    project = golden_project
    first = run_cycle(project, {"min_golden_size": 40}, epochs=1)
    cycle = run_cycle(project, {"min_golden_size": 40, "non_inferiority_margin": 0.5, "require_approval": True},
                      epochs=1)
    member(project, "vera", ProjectRole.VIEWER)
    base = ["--project", project.slug, "--cycle", str(cycle.number), "--reason", "checked"]
    with pytest.raises(CommandError, match="needs the ml engineer role"):
        call_command("hitl", "approve-cycle", *base, "--user", "vera")
    call_command("hitl", "approve-cycle", *base, "--user", "otto", stdout=StringIO())
    cycle.refresh_from_db()
    assert cycle.decision == CycleDecision.PROMOTED and cycle.decided_by == "otto"
    with pytest.raises(CommandError, match="not awaiting approval"):
        call_command("hitl", "reject-cycle", *base, "--user", "otto")
    out = StringIO()
    call_command("hitl", "rollback", "--project", project.slug, "--model-version", first.candidate_version.name,
                 "--user", "otto", "--reason", "back", stdout=out)
    assert "v1 is production again" in out.getvalue()
    # a waiting cycle can be cancelled: its candidate is archived and the project may start another
    waiting = run_cycle(project, {"min_golden_size": 40, "non_inferiority_margin": 0.5, "require_approval": True},
                        epochs=1)
    assert waiting.status == CycleStatus.AWAITING_APPROVAL
    cycle_cancel(cycle_id=waiting.id, actor="otto")
    assert ModelVersion.objects.get(pk=waiting.candidate_version_id).stage == ModelStage.ARCHIVED
    assert cycle_request(project=project, requested_by="test").number == waiting.number + 1
    assert trust_verify(project_id=project.id).ok


def test_the_cycle_page_shows_the_rule_table_and_a_person_approves_there(golden_project, operator, client) -> None:
    project = golden_project
    cycle = run_cycle(project, {"min_golden_size": 40, "require_approval": True}, epochs=1)
    assert cycle.status == CycleStatus.AWAITING_APPROVAL  # a first model can wait for a person too
    member(project, "vera", ProjectRole.VIEWER)
    client.login(username="vera", password="vera-pass-123")
    page = client.get(f"/cycles/{cycle.pk}/").content.decode()
    assert 'id="gate-rules"' in page and "min_golden_size" in page and "45 golden-set items" in page
    assert "Approve and promote" not in page  # a viewer sees no button ...
    assert client.post(f"/cycles/{cycle.pk}/decide", {"decision": "approve", "reason": "x"}).status_code == 403
    client.login(username="otto", password="otto-pass-123")
    page = client.get(f"/cycles/{cycle.pk}/").content.decode()
    assert "Approve and promote v1" in page
    response = client.post(f"/cycles/{cycle.pk}/decide", {"decision": "approve", "reason": "looked at it"})
    assert response.status_code == 302
    cycle.refresh_from_db()
    assert cycle.decision == CycleDecision.PROMOTED and cycle.decided_by == "otto"
    assert ModelVersion.objects.get(pk=cycle.candidate_version_id).stage == ModelStage.PRODUCTION


def test_the_admin_checks_gate_rules(admin_client, project) -> None:
    from django.urls import reverse

    url = reverse("admin:hitl_project_change", args=[project.id])
    form = admin_client.get(url).context["adminform"].form
    data = {name: "" if form[name].value() is None else form[name].value() for name in form.fields}
    for inline in admin_client.get(url).context["inline_admin_formsets"]:
        management = inline.formset.management_form
        data.update({f"{management.prefix}-{key}": v for key, v in management.initial.items()})
    refused = admin_client.post(url, {**data, "gate_rules": '{"non_inferiority_margin": 0.9}'})
    assert refused.status_code == 200
    assert any("gate_rules.non_inferiority_margin" in e for e in refused.context["adminform"].form.errors["gate_rules"])
    accepted = admin_client.post(url, {**data, "gate_rules": '{"require_approval": true}'})
    assert accepted.status_code == 302
    project.refresh_from_db()
    assert project.gate_rules == {"require_approval": True}
