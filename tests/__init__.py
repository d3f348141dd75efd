import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as workers/__init__.py, before conftest imports torch
