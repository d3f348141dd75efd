from django import forms
from django.contrib import admin

from hitl import models
from hitl.errors import InvalidInput
from hitl.services.projects import FIXED_SETTINGS, PROJECT_SETTINGS, validate_project_settings

# The admin is for looking and for plain settings. State changes (promotion, cycle status, labels)
# go through the services, which keep the trust history and the state machines.


class ProjectForm(forms.ModelForm):
    """The same checks as `manage.py hitl configure-project` and the API."""

    def clean(self) -> dict:
        cleaned = super().clean()
        try:
            validate_project_settings({name: cleaned[name] for name in PROJECT_SETTINGS if name in cleaned})
        except InvalidInput as exc:
            for error in exc.errors:
                field = error.field.split(".")[0]  # train_config.epochs -> the train_config field
                self.add_error(field if field in self.fields else None, str(error) if field != error.field
                               else error.message)
        return cleaned


class MembershipFormSet(forms.BaseInlineFormSet):
    """A project that had an admin keeps one, as the services require (see hitl.services.access)."""

    def clean(self) -> None:
        super().clean()
        had_admin = any(form.initial.get("role") == models.ProjectRole.ADMIN for form in self.forms)
        keeps_admin = any(
            form.cleaned_data.get("role") == models.ProjectRole.ADMIN
            and not form.cleaned_data.get("DELETE")
            for form in self.forms if form.cleaned_data
        )
        if had_admin and not keeps_admin:
            raise forms.ValidationError("keep at least one project admin: make someone else admin")


class MembershipInline(admin.TabularInline):
    """Members and their roles. Only users with the admin's membership permissions (superusers)
    see this; being staff or superuser gives no access to a project itself."""

    model = models.ProjectMembership
    formset = MembershipFormSet
    extra = 0
    raw_id_fields = ["user"]
    readonly_fields = ["created_at"]


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    form = ProjectForm
    inlines = [MembershipInline]
    list_display = ["slug", "name", "task_type", "architecture", "selection_strategy", "batch_size"]

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        return [*sorted(FIXED_SETTINGS), "task_type", "created_at"] if obj else ["created_at"]


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["project", "name", "architecture", "stage", "created_at", "promoted_at"]
    list_filter = ["project", "stage"]
    raw_id_fields = ["parent"]
    exclude = ["training_labels"]
    readonly_fields = ["project", "name", "architecture", "labels", "stage", "parent", "promoted_at", "promoted_by"]

    def has_add_permission(self, request) -> bool:
        return False  # versions come from `manage.py hitl register-model` and retraining cycles


@admin.register(models.Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["project", "name", "environment", "model_version", "follows_production", "last_seen_at"]
    readonly_fields = ["token_digest", "token_prefix"]


@admin.register(models.RetrainingCycle)
class RetrainingCycleAdmin(admin.ModelAdmin):
    list_display = ["project", "number", "status", "decision", "created_at", "finished_at"]
    list_filter = ["project", "status", "decision"]
    readonly_fields = [f.name for f in models.RetrainingCycle._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False  # cycles are started through the API, the CLI or the beat


@admin.register(models.ReviewBatch)
class ReviewBatchAdmin(admin.ModelAdmin):
    list_display = ["project", "id", "strategy", "size", "status", "created_at"]


@admin.register(models.TrustEvent)
class TrustEventAdmin(admin.ModelAdmin):
    list_display = ["project", "sequence", "kind", "actor", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(models.Alert)
class AlertAdmin(admin.ModelAdmin):
    """For looking: alerts are raised by the monitor and acknowledged on the project's Alerts page or
    through the API, where the project role is checked."""

    list_display = ["project", "deployment", "model_version", "metric", "value", "threshold", "window_start",
                    "status", "action"]
    list_filter = ["status", "metric"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
