"""A project with real trained cycles for the workbench pages' tests (web and browser): 150
labeled Fashion-MNIST items, 45 of them golden set v1; cycle 1 trains v1 and is promoted on the
golden set, cycle 2 trains v2 from it, which passes the gate and awaits a person's approval. Each
candidate's temperature is fitted on the 21 held-out labels (the default asks for 50)."""

from __future__ import annotations

from django.test import override_settings

from hitl.models import (
    CycleStatus,
    GoldenItem,
    Label,
    LabelSource,
    LabelStatus,
    Project,
    RetrainingCycle,
)
from hitl.services.cycles import cycle_request
from hitl.services.golden import golden_set_freeze
from hitl.services.labels import label_submit
from workers.pipelines.cycles import cycle_evaluate, cycle_train


def run_cycle(project: Project, rules: dict, epochs: int) -> RetrainingCycle:
    project.gate_rules = rules
    project.save(update_fields=["gate_rules"])
    cycle = cycle_request(project=project, requested_by="test", train_config={"epochs": epochs})
    cycle_train(cycle_id=cycle.id)
    cycle_evaluate(cycle_id=cycle.id)
    cycle.refresh_from_db()
    return cycle


def trained_cycles(project: Project, labeled_items) -> tuple[RetrainingCycle, RetrainingCycle]:
    ids = labeled_items(range(150))
    golden = ids[::3][:45]
    GoldenItem.objects.bulk_create([GoldenItem(project=project, item_id=i, source="golden") for i in golden])
    for label in Label.objects.filter(item_id__in=golden, status=LabelStatus.CURRENT):  # reviewed, as golden labels are
        label_submit(item_id=label.item_id, value=label.value, source=LabelSource.SIMULATED, reviewer_name="reviewer")
    golden_set_freeze(project=project, actor="test", reason="fixture")
    with override_settings(HITL_MIN_CALIBRATION_LABELS=20):
        first = run_cycle(project, {"min_golden_size": 40}, epochs=2)
        second = run_cycle(project, {"min_golden_size": 40, "non_inferiority_margin": 0.5,
                                     "require_approval": True}, epochs=2)
    assert first.decision == "promoted" and second.status == CycleStatus.AWAITING_APPROVAL, (first.gate, second.gate)
    return first, second
