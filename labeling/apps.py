from django.apps import AppConfig


class LabelingConfig(AppConfig):
    name = "labeling"
    verbose_name = "Label Studio integration"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from hitl.signals import review_batch_selected
        from labeling.receivers import push_after_selection

        review_batch_selected.connect(push_after_selection, dispatch_uid="labeling.push_after_selection")
