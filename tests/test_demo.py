"""`make demo` as a new user runs it: SQLite, no Redis (the embedded broker), a real worker."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings


@pytest.mark.worker
def test_demo_runs_the_whole_loop_without_redis_or_postgres(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "HITL_MEDIA_ROOT", "HITL_STORAGE_ROOT"}}
    env.update(HITL_DATA_DIR=str(tmp_path), CELERY_BROKER_URL="redis://127.0.0.1:1/0", PYTHONUNBUFFERED="1")
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
    subprocess.run([*manage, "migrate", "--verbosity", "0"], env=env, check=True, timeout=120)
    result = subprocess.run(
        [*manage, "demo", "--seed-labels", "150", "--stream", "600", "--cycles", "2", "--batch", "80", "--epochs", "6",
         "--golden", "60"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "did not answer, so tasks go through Celery's embedded filesystem broker" in out
    assert "Started a Celery worker process" in out
    interval = r"([\d.]+ \[[\d.]+,[\d.]+\]|-)"
    rows = re.findall(rf"^\s+(\d+)\s+(v\d+)\s+(\d+)\s+(\d+)\s+{interval}\s+{interval}\s+(promoted|rejected)\s+(v\d+)"
                      r"\s+([\d.]+)$", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["1", "2", "3"], out
    assert all(float(r[8]) > 0.3 for r in rows)  # 10k test accuracy far above chance (0.1)
    assert int(rows[-1][2]) > int(rows[0][2])  # labels grew with each cycle
    assert [r[3] for r in rows] == ["0", "60", "60"] and rows[1][4] != "-"  # golden-set accuracy with its interval
    for estimate, lower, upper in re.findall(r"([\d.]+) \[([\d.]+),([\d.]+)\]", rows[1][4] + rows[2][4]):
        assert float(lower) <= float(estimate) <= float(upper) and float(upper) - float(lower) > 0.02
    assert "The gate's rules for cycle 3 (golden set v1, 60 items" in out and "min_golden_size" in out
    assert re.search(r"approving through POST /api/v1/cycles/\d+/approve/ as user demo\n    -> 200: promoted", out), out
    assert re.search(r"rollback/ -> 200: production (v\d+) -> (v\d+); deployment 'edge-camera-1' \(follows "
                     r"production\) now runs \2", out), out
    with sqlite3.connect(tmp_path / "hitl.sqlite3") as db:
        statuses = db.execute("SELECT status FROM hitl_retrainingcycle ORDER BY number").fetchall()
        sources = dict(db.execute("SELECT source, count(*) FROM hitl_label GROUP BY source").fetchall())
        open_tasks = db.execute("SELECT count(*) FROM hitl_reviewtask WHERE status = 'open'").fetchone()[0]
        conflicts = db.execute("SELECT t.id, count(a.id), count(DISTINCT a.value) FROM hitl_reviewtask t JOIN "
                               "hitl_reviewanswer a ON a.task_id = t.id WHERE t.status = 'conflict' GROUP BY t.id").fetchall()
        double_label_fraction = db.execute("SELECT double_label_fraction FROM hitl_project").fetchone()[0]
        demo_roles = db.execute("SELECT m.role FROM hitl_projectmembership m JOIN auth_user u "
                                "ON u.id = m.user_id WHERE u.username = 'demo'").fetchall()
        kinds = [k for (k,) in db.execute("SELECT kind FROM hitl_trustevent ORDER BY sequence").fetchall()]
    assert statuses == [("succeeded",)] * 3
    assert sources["import"] == 150 and sources["simulated"] == 160 + 60  # two batches and the golden set
    assert {"golden_set_frozen", "gate_evaluated", "cycle_approved", "model_rolled_back"} <= set(kinds)
    assert open_tasks == 79  # a batch left for a person in the web UI, less the item in conflict
    assert [(n, values) for _, n, values in conflicts] == [(2, 2)]  # two blind answers that differ: decide it
    assert double_label_fraction == 0  # the demo user labels the rest of the batch alone
    assert re.search(r"and a conflict: item \d+, ana said '[^']+', ben said '[^']+' \(conflict\)", out), out
    assert demo_roles == [("admin",)]  # user demo is the demo project's admin: it sees the project
