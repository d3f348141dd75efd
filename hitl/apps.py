from django.apps import AppConfig
from django.db.backends.signals import connection_created


class HitlConfig(AppConfig):
    name = "hitl"
    verbose_name = "hitl"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from hitl.db import register_sqlite_functions

        connection_created.connect(register_sqlite_functions, dispatch_uid="hitl-sqlite-functions")
