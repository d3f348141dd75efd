"""Operator commands for Label Studio: ``python manage.py labelstudio <action> --project SLUG``.

    connect   create or update the Label Studio project, its labeling config and webhook (with a
              secret of its own, issued anew if Label Studio's webhook does not carry it)
    rotate-secret  issue a new webhook secret and set it in Label Studio; the old one is accepted
              for --grace seconds more (default HITL_LS_SECRET_GRACE_SECONDS; 0 if it leaked)
    push      push open review tasks (with pre-annotations) that are not in Label Studio yet
    sync      pull every annotation back (recovers what webhooks missed)
    status    tasks pushed, labeled, pending; last push and sync; refused events; errors; reachable?
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from hitl.errors import Busy, InvalidInput
from hitl.models import Project
from labeling.client import LabelStudioError
from labeling.models import LabelStudioProject
from labeling.services.provisioning import ls_project_provision, webhook_secret_rotate
from labeling.services.pull import ls_reconcile
from labeling.services.push import ls_push
from labeling.services.status import ls_status


class Command(BaseCommand):
    help = "Connect hitl projects to Label Studio, push review tasks, sync labels back, show status."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["connect", "rotate-secret", "push", "sync", "status"])
        parser.add_argument("--project", required=True, help="hitl project slug")
        parser.add_argument("--grace", type=int, default=None,
                            help="rotate-secret: seconds the old secret is still accepted")

    def handle(self, *args: Any, **options: Any) -> None:
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"no hitl project {options['project']!r}")
        try:
            if options["action"] == "rotate-secret":
                self.rotate_secret(project, options["grace"])
            else:
                getattr(self, options["action"])(project)
        except (LabelStudioError, InvalidInput) as exc:
            raise CommandError(str(exc)) from None
        except Busy as exc:
            self.stdout.write(f"{exc}; nothing done")

    def connect(self, project: Project) -> None:
        result = ls_project_provision(project_id=project.id)
        for change in result.changes or ["already up to date: nothing changed"]:
            self.stdout.write(change)
        self.stdout.write(f"{project.slug} <-> Label Studio project {result.link.ls_project_id}")

    def rotate_secret(self, project: Project, grace: int | None) -> None:
        for change in webhook_secret_rotate(project_id=project.id, grace_seconds=grace).changes:
            self.stdout.write(change)

    def push(self, project: Project) -> None:
        result = ls_push(project_id=project.id)
        self.stdout.write(f"pushed {result.pushed} tasks" + (f", confirmed {result.recovered} from an interrupted push"
                                                              if result.recovered else ""))

    def sync(self, project: Project) -> None:
        result = ls_reconcile(project_id=project.id)
        self.stdout.write(f"synced {result.tasks} tasks, {result.annotations} annotations; "
                          f"{result.deleted} deletions applied, {result.missing_tasks} tasks missing in Label Studio")

    def status(self, project: Project) -> None:
        try:
            s = ls_status(project_id=project.id)
        except LabelStudioProject.DoesNotExist:
            raise CommandError(f"{project.slug} is not connected: run `manage.py labelstudio connect --project {project.slug}`") from None
        lines = [
            f"Label Studio: {s.reachability}",
            f"project {s.project} <-> Label Studio project {s.ls_project_id}",
            (f"tasks: {s.pushed} pushed: {s.pending} waiting for a label, {s.labeled} labeled, "
             f"{s.skipped} skipped, {s.cancelled} cancelled, {s.conflict} in conflict, {s.reserved} mid-push, "
             f"{s.missing} deleted in Label Studio"),
            f"rejected annotations: {s.rejected}" + "".join(f"\n  - {r}" for r in s.recent_rejections),
            f"webhook: {s.webhook_url}; secret {s.webhook_secret}",
            f"webhook events: {s.webhook_events_pending} pending, {s.webhook_events_failed} failed",
            f"refused events and annotations: {s.refused}" + "".join(f"\n  - {r}" for r in s.recent_refusals),
            f"last push: {s.last_push_at or 'never'}; last sync: {s.last_sync_at or 'never'}",
        ]
        if s.last_error:
            lines.append(f"last error ({s.last_error_at}): {s.last_error}")
        self.stdout.write("\n".join(lines))
