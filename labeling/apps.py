from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "labeling"
    verbose_name = "Label Studio integration"
    default_auto_field = "django.db.models.BigAutoField"
