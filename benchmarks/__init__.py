"""Benchmarks: scripts that print figures and write them to docs/benchmarks.md."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as workers/__init__.py: torch on a shared CPU
