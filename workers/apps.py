from django.apps import AppConfig


class WorkersConfig(AppConfig):
    """The worker side as a Django app, for its management commands (``manage.py demo``), which
    run models and so must not live in hitl/. It has no models."""

    name = "workers"
