"""Worker processes make OpenMP threads wait passively before torch loads (benchmarks/omp_wait.py:
spinning threads make torch many times slower on a shared CPU), unless the environment says
otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

PROBE = "import json, os, sys; import {module}; print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules]))"


def probe(module: str, **env: str) -> list:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], env={**clean, **env},
                         cwd=settings.BASE_DIR, check=True, capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["workers", "benchmarks"])
def test_the_policy_is_passive_before_torch_loads(module: str) -> None:
    assert probe(module) == ["PASSIVE", False]


def test_an_explicit_policy_is_kept() -> None:
    assert probe("workers", OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", False]


def test_manage_py_sets_it_for_commands() -> None:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", "import os; print(os.environ['OMP_WAIT_POLICY'])"],
                         env=clean, cwd=settings.BASE_DIR, check=True, capture_output=True, text=True, timeout=120).stdout
    assert out.strip().splitlines()[-1] == "PASSIVE"
