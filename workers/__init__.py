"""Celery app and thin tasks; ``workers.ml`` holds the torch/numpy code."""
