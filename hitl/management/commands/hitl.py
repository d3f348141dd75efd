"""Operator commands: ``python manage.py hitl <action> ...``.

    hitl create-project --slug cats --labels cat,dog [--architecture resnet18] [--strategy margin]
    hitl configure-project --project cats [--strategy bald] [--batch-size 200] [--mc-samples 20] [--monitoring '{...}'] ...
    hitl register-model --project cats --name v0 --weights model.safetensors [--promote]
    hitl import-images --project cats DIR      (DIR/*.jpg unlabeled, or DIR/<label>/*.jpg labeled)
    hitl create-deployment --project cats --name edge-1 --environment edge [--model-version v0] [--storage-prefix cats/edge-1]
    hitl rotate-token --project cats --name edge-1
    hitl select-batch --project cats [--size 100] [--strategy entropy]
    hitl start-cycle --project cats [--epochs 20]
    hitl status --project cats
    hitl verify-trust --project cats
    hitl export-trust --project cats --output cats-trust.jsonl
    hitl rotate-trust-key
    hitl add-member --project cats --user rita --role reviewer  (viewer/reviewer/ml_engineer/admin)
    hitl remove-member --project cats --user rita
    hitl members --project cats
    hitl golden-set --project cats --propose 200 | --freeze --reason "..." [--from-audit] | (list)
    hitl approve-cycle --project cats --cycle 3 --user otto --reason "checked the rule table"
    hitl reject-cycle --project cats --cycle 3 --user otto --reason "..."
    hitl rollback --project cats --model-version v2 --user otto --reason "..."
    hitl explain --project cats --model v3
    hitl monitor --project cats [--webhook-key]   (judge the last complete window now)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management.base import BaseCommand, CommandError, CommandParser

from hitl import mlspec, selectors
from hitl.errors import Conflict, InvalidInput
from hitl.models import Deployment, ModelVersion, Project, ProjectRole, RetrainingCycle
from hitl.selectors import production_version
from hitl.services.access import (
    Action,
    NotAMember,
    RoleTooLow,
    membership_remove,
    membership_set,
    role_required,
)
from hitl.services.alerts import alert_webhook_key
from hitl.services.cycles import cycle_approve, cycle_reject, cycle_request, model_version_rollback
from hitl.services.golden import golden_set_freeze, golden_set_propose
from hitl.services.ingestion import ImportedImage, import_label_refusals, items_import
from hitl.services.monitoring import project_monitor
from hitl.services.projects import (
    deployment_create,
    deployment_rotate_token,
    model_version_promote,
    model_version_register,
    project_create,
    project_update,
)
from hitl.services.selection import review_batch_request
from hitl.services.trust import trust_export, trust_verify
from hitl.trust_keys import rotate_signing_key

ACTOR = "operator (manage.py hitl)"


def image_folder_files(folder: Path) -> list[tuple[Path, str | None]]:
    """Files to import: with sub-folders, torchvision's ImageFolder layout (each sub-folder's
    name is its files' label); without, the folder's files, unlabeled. Hidden files are skipped."""
    visible = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    classes = [p for p in visible if p.is_dir()]
    if not classes:
        return [(p, None) for p in visible if p.is_file()]
    loose = [p.name for p in visible if p.is_file()]
    if loose:
        raise CommandError(f"{folder} mixes files ({', '.join(loose[:3])}) with label folders: put every "
                           "image in its label's folder, or import a folder of files only")
    return [(path, label.name) for label in classes
            for path in sorted(label.rglob("*")) if path.is_file() and not path.name.startswith(".")]
IMPORT_CHUNK = 500


class Command(BaseCommand):
    help = "Operate hitl projects, models, deployments, batches and cycles."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="action")

        create = actions.add_parser("create-project", help="create a classification project")
        create.add_argument("--slug", required=True)
        create.add_argument("--name", default="")
        create.add_argument("--labels", required=True, help="comma-separated class names, in model output order")
        create.add_argument("--architecture", default="small_cnn")
        create.add_argument("--initial-weights", default="", help="local weights file the first model starts from")
        create.add_argument("--strategy", default="margin")
        create.add_argument("--batch-size", type=int, default=100)
        create.add_argument("--audit-fraction", type=float, default=0.1)
        create.add_argument("--holdout-fraction", type=float, default=0.2)

        configure = actions.add_parser("configure-project", help="change a project's settings")
        configure.add_argument("--project", required=True)
        configure.add_argument("--strategy", dest="selection_strategy")
        configure.add_argument("--batch-size", type=int)
        configure.add_argument("--audit-fraction", type=float)
        configure.add_argument("--double-label-fraction", type=float,
                               help="share of review tasks two reviewers answer blind (golden-set items always)")
        configure.add_argument("--mc-samples", type=int)
        configure.add_argument("--committee-size", type=int)
        configure.add_argument("--class-balance", choices=["on", "off"])
        configure.add_argument("--selection-pool-limit", type=int)
        configure.add_argument("--gate-rules", type=_json_object,
                               help='the promotion gate\'s rules as JSON, e.g. \'{"min_golden_size": 200}\'')
        configure.add_argument("--epochs", type=int, help="training epochs per cycle")
        configure.add_argument("--monitoring", type=_json_object,
                               help='monitoring rules as JSON (replacing the old ones), e.g. \'{"max_class_psi": 0.2, '
                                    '"notify_emails": ["ml@example.com"]}\'')

        register = actions.add_parser("register-model", help="import a hitl safetensors checkpoint, or (with "
                                      "--architecture and --labels) a torchvision state_dict .pt/.pth or .safetensors")
        register.add_argument("--project", required=True)
        register.add_argument("--name", required=True)
        register.add_argument("--weights", required=True, type=Path)
        register.add_argument("--promote", action="store_true")
        register.add_argument("--architecture", help=f"the weights' architecture: {', '.join(mlspec.ARCHITECTURES)}")
        register.add_argument("--labels", help="comma-separated class names in the model's output order "
                              "(default: the project's labels)")
        register.add_argument("--image-size", type=int, help="input side in pixels (default: the architecture's)")
        register.add_argument("--mean", help="per-channel normalisation mean, comma-separated")
        register.add_argument("--std", help="per-channel normalisation std, comma-separated")

        images = actions.add_parser("import-images", help="add images with no prediction (cold start); an "
                                    "ImageFolder (one sub-folder per label) imports its labels too")
        images.add_argument("--project", required=True)
        images.add_argument("directory", type=Path)
        images.add_argument("--chunk", type=int, default=IMPORT_CHUNK, help="images stored per transaction")

        deploy = actions.add_parser("create-deployment", help="create a deployment and print its API token")
        deploy.add_argument("--project", required=True)
        deploy.add_argument("--name", required=True)
        deploy.add_argument("--environment", required=True, help="cloud, on_prem, mobile or edge")
        deploy.add_argument("--model-version", help="default: the production model")
        deploy.add_argument("--pinned", action="store_true", help="do not follow newly promoted models")
        deploy.add_argument("--storage-prefix", help="folder under the storage root its image_path values "
                            "must lie in (default: <project>/<name>)")

        rotate = actions.add_parser("rotate-token", help="give a deployment a new API token (the old one stops working)")
        rotate.add_argument("--project", required=True)
        rotate.add_argument("--name", required=True, help="deployment name")

        select = actions.add_parser("select-batch", help="queue a review batch selection")
        select.add_argument("--project", required=True)
        select.add_argument("--size", type=int)
        select.add_argument("--strategy")
        select.add_argument("--audit-fraction", type=float)

        cycle = actions.add_parser("start-cycle", help="queue a retraining cycle")
        cycle.add_argument("--project", required=True)
        cycle.add_argument("--epochs", type=int)

        status = actions.add_parser("status", help="show a project's models, cycles and queue")
        status.add_argument("--project", required=True)

        verify = actions.add_parser("verify-trust", help="check the trust history: links, hashes, signatures, head file")
        verify.add_argument("--project", required=True)

        export = actions.add_parser("export-trust", help="write the trust history as JSON lines for offline checks")
        export.add_argument("--project", required=True)
        export.add_argument("--output", help="file to write (default: standard output)")

        actions.add_parser("rotate-trust-key", help="sign new trust events with a new key (old events still verify)")
        add_member = actions.add_parser("add-member", help="give a user a role in a project")
        add_member.add_argument("--project", required=True)
        add_member.add_argument("--user", required=True, help="username")
        add_member.add_argument("--role", required=True, choices=ProjectRole.values)

        remove_member = actions.add_parser("remove-member", help="take a user out of a project")
        remove_member.add_argument("--project", required=True)
        remove_member.add_argument("--user", required=True, help="username")

        members = actions.add_parser("members", help="list a project's members and their roles")
        members.add_argument("--project", required=True)

        golden = actions.add_parser("golden-set", help="list, propose items for, or freeze the golden set")
        golden.add_argument("--project", required=True)
        golden_action = golden.add_mutually_exclusive_group()
        golden_action.add_argument("--propose", type=int, metavar="N", help="queue N random pool items for review")
        golden_action.add_argument("--freeze", action="store_true", help="freeze a new version of the labeled items")
        golden.add_argument("--from-audit", action="store_true", help="with --freeze: take untrained audit items too")
        golden.add_argument("--reason", default="")
        for name, text in (("approve-cycle", "promote a candidate that waits for approval"),
                           ("reject-cycle", "turn down a candidate that waits for approval")):
            decide = actions.add_parser(name, help=text)
            decide.add_argument("--project", required=True)
            decide.add_argument("--cycle", type=int, required=True, help="the cycle's number in the project")
            decide.add_argument("--user", required=True, help="who decides: a member with the approve role")
            decide.add_argument("--reason", required=True)
        rollback = actions.add_parser("rollback", help="put an earlier production model back into production")
        rollback.add_argument("--project", required=True)
        rollback.add_argument("--model-version", required=True)
        rollback.add_argument("--user", required=True, help="who rolls back: a member with the rollback role")
        rollback.add_argument("--reason", required=True)
        explain = actions.add_parser("explain", help="why a model version is where it is")
        explain.add_argument("--project", required=True)
        explain.add_argument("--model", required=True)
        monitor = actions.add_parser("monitor", help="judge the deployments' last complete window now (drift, "
                                     "volume, live accuracy, agreement): alerts, action, notifications")
        monitor.add_argument("--project", required=True)
        monitor.add_argument("--webhook-key", action="store_true",
                             help="print the key that signs this project's alert webhooks, and run nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"].replace("-", "_")
        try:
            getattr(self, action)(options)
        except InvalidInput as exc:
            raise CommandError("; ".join(str(e) for e in exc.errors)) from None
        except Conflict as exc:
            raise CommandError(str(exc)) from None
        except (NotAMember, RoleTooLow) as exc:
            raise CommandError(str(exc) or "not a member of this project") from None

    def _project(self, slug: str) -> Project:
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            raise CommandError(f"no project {slug!r} (existing: {', '.join(Project.objects.values_list('slug', flat=True)) or 'none'})")
        return project

    def create_project(self, o: dict[str, Any]) -> None:
        project = project_create(
            slug=o["slug"], name=o["name"], labels=[label.strip() for label in o["labels"].split(",")],
            architecture=o["architecture"], initial_weights=o["initial_weights"], selection_strategy=o["strategy"],
            batch_size=o["batch_size"], audit_fraction=o["audit_fraction"], holdout_fraction=o["holdout_fraction"],
        )
        self.stdout.write(f"created project {project.slug} with {len(project.labels)} labels")

    def configure_project(self, o: dict[str, Any]) -> None:
        project = self._project(o["project"])
        names = ["selection_strategy", "batch_size", "audit_fraction", "mc_samples", "committee_size",
                 "selection_pool_limit", "double_label_fraction"]
        changes: dict[str, Any] = {name: o[name] for name in names if o[name] is not None}
        if o["class_balance"]:
            changes["class_balance"] = o["class_balance"] == "on"
        if o["epochs"] is not None:
            changes["train_config"] = {**project.train_config, "epochs": o["epochs"]}
        if o["gate_rules"] is not None:
            changes["gate_rules"] = o["gate_rules"]
        if o["monitoring"] is not None:
            changes["monitoring"] = o["monitoring"]
        project = project_update(project_id=project.id, changes=changes)
        self.stdout.write(f"{project.slug}: " + (", ".join(f"{k}={getattr(project, k)}" for k in changes) or "no changes"))

    def register_model(self, o: dict[str, Any]) -> None:
        project = self._project(o["project"])
        if o["architecture"]:
            version = self._register_foreign(project, o)
        else:
            version = model_version_register(project=project, name=o["name"], weights_path=o["weights"], actor=ACTOR)
        if o["promote"]:
            model_version_promote(model_version_id=version.id, actor=ACTOR, reason="registered with --promote")
        self.stdout.write(f"registered {project.slug}:{version.name}{' (production)' if o['promote'] else ''}")

    def import_images(self, o: dict[str, Any]) -> None:
        project = self._project(o["project"])
        folder = o["directory"].resolve()
        if not folder.is_dir():
            raise CommandError(f"{o['directory']} is not a directory")
        files = image_folder_files(folder)
        if not files:
            raise CommandError(f"no files under {folder}: give a folder of images, or one sub-folder per label")
        if o["chunk"] < 1:
            raise CommandError("--chunk must be at least 1")
        def chunks() -> Iterator[tuple[int, list[ImportedImage]]]:
            for start in range(0, len(files), o["chunk"]):
                yield start, [ImportedImage(str(path.relative_to(folder)), path.read_bytes(), label)
                              for path, label in files[start:start + o["chunk"]]]

        if any(label is not None for _, label in files):  # refused labels stop the import before any chunk
            refused = [error for start, chunk in chunks()
                       for error in import_label_refusals(project=project, images=chunk, first_index=start)]
            if refused:
                more = f"; and {len(refused) - 20} more" if len(refused) > 20 else ""
                raise CommandError(f"nothing imported: {len(refused)} labeled images are refused: "
                                   + "; ".join(error.message for error in refused[:20]) + more)
        items = labels = 0
        for _, chunk in chunks():  # each chunk whole or not at all; a rerun skips stored images
            result = items_import(project=project, images=chunk, source=str(folder), actor=ACTOR)
            items, labels = items + result.items_created, labels + result.labels_created
        labeled = sum(label is not None for _, label in files)
        self.stdout.write(f"imported {len(files)} images into {project.slug}: {items} new items, "
                          f"{labels} new labels from {labeled} labeled images (source {folder})")

    def _register_foreign(self, project: Project, o: dict[str, Any]) -> ModelVersion:
        """A torchvision state_dict: loaded strictly, checked by a forward pass and written as a hitl
        checkpoint by the workers' code (torch runs in this command, never in the web)."""
        from workers.ml.architectures import input_spec_for
        from workers.ml.byo import checkpoint_from_state_dict

        if o["architecture"] not in mlspec.ARCHITECTURES:
            raise CommandError(f"unknown architecture {o['architecture']!r}: use one of {', '.join(mlspec.ARCHITECTURES)}")
        labels = [x.strip() for x in o["labels"].split(",")] if o["labels"] else list(project.labels)
        spec = input_spec_for(o["architecture"], o["image_size"])
        try:
            mean = tuple(float(x) for x in o["mean"].split(",")) if o["mean"] else spec.mean
            std = tuple(float(x) for x in o["std"].split(",")) if o["std"] else spec.std
        except ValueError:
            raise CommandError("--mean and --std take comma-separated numbers, one per channel") from None
        spec = replace(spec, mean=mean, std=std)
        with tempfile.TemporaryDirectory() as scratch:
            try:
                files = checkpoint_from_state_dict(o["weights"], architecture=o["architecture"], labels=labels,
                                                   spec=spec, directory=Path(scratch))
            except (ValueError, FileNotFoundError) as exc:
                raise CommandError(str(exc)) from None
            names = {f.name for f in files}
            return model_version_register(
                project=project, name=o["name"], weights_path=Path(scratch) / mlspec.WEIGHTS_FILE, actor=ACTOR,
                onnx_path=Path(scratch) / mlspec.ONNX_FILE if mlspec.ONNX_FILE in names else None)

    def create_deployment(self, o: dict[str, Any]) -> None:
        project = self._project(o["project"])
        if o["model_version"]:
            version = ModelVersion.objects.filter(project=project, name=o["model_version"]).first()
            if version is None:
                raise CommandError(f"no model version {o['model_version']!r} in {project.slug}")
        else:
            version = production_version(project.id)
            if version is None:
                raise CommandError(f"{project.slug} has no production model yet: give --model-version")
        deployment, token = deployment_create(project=project, name=o["name"], environment=o["environment"],
                                              model_version=version, follows_production=not o["pinned"],
                                              storage_prefix=o["storage_prefix"])
        self.stdout.write(f"created deployment {deployment.name} running {version.name}, "
                          f"reading images under {deployment.storage_prefix}/")
        self.stdout.write(f"API token (shown once, store it now): {token}")

    def rotate_token(self, o: dict[str, Any]) -> None:
        deployment = Deployment.objects.filter(project=self._project(o["project"]), name=o["name"]).first()
        if deployment is None:
            raise CommandError(f"no deployment {o['name']!r} in {o['project']}")
        token = deployment_rotate_token(deployment_id=deployment.id)
        self.stdout.write(f"new API token for {deployment.name} (shown once, store it now): {token}")

    def select_batch(self, o: dict[str, Any]) -> None:
        batch = review_batch_request(project=self._project(o["project"]), requested_by=ACTOR, size=o["size"],
                                     strategy=o["strategy"], audit_fraction=o["audit_fraction"])
        self.stdout.write(f"queued review batch {batch.id} ({batch.strategy}, {batch.size} items)")

    def start_cycle(self, o: dict[str, Any]) -> None:
        config = {"epochs": o["epochs"]} if o["epochs"] is not None else None
        cycle = cycle_request(project=self._project(o["project"]), requested_by=ACTOR, train_config=config)
        self.stdout.write(f"queued cycle {cycle.number} (id {cycle.id})")

    def status(self, o: dict[str, Any]) -> None:
        project = self._project(o["project"])
        summary = selectors.project_summary(project)
        self.stdout.write(f"{project.name} ({project.slug}): {summary['items']} items, {summary['labeled']} "
                          f"human-labeled, {summary['predictions']} predictions, {summary['open_review_tasks']} open reviews")
        for e in selectors.audit_accuracy(project):
            self.stdout.write(f"  live accuracy of {e.model_version} from {e.n} audit labels: {e.accuracy:.3f} "
                              f"(95% interval {e.low:.3f}-{e.high:.3f}"
                              f"{f', {e.slices} slices weighted by pool size' if e.weighted else ''})")
        for version in selectors.model_versions_list(project)[:10]:
            self.stdout.write(f"  model {version.name:<10} {version.stage:<10} {version.training_label_count} training labels")
        for cycle in selectors.cycles_list(project)[:10]:
            accuracy = {s.role: f"{s.accuracy:.3f}" for s in cycle.snapshots.all() if s.eval_set == "golden"}
            self.stdout.write(f"  cycle {cycle.number:<4} {cycle.status:<10} {cycle.decision or '-':<9} golden-set "
                              f"candidate {accuracy.get('candidate', '-')} production {accuracy.get('production', '-')}")

    def verify_trust(self, o: dict[str, Any]) -> None:
        check = trust_verify(project_id=self._project(o["project"]).id)
        if not check.ok:
            raise CommandError(f"trust history is BROKEN at event {check.first_bad_sequence} "
                               f"(likely {check.cause}): {check.problem}")
        self.stdout.write(f"trust history verified: {check.events} events, chain intact, signatures valid, "
                          f"matches the head file; head hash {check.head_hash}")

    def export_trust(self, o: dict[str, Any]) -> None:
        lines = trust_export(project_id=self._project(o["project"]).id)
        if not o["output"]:
            for line in lines:
                self.stdout.write(line)
            return
        target = Path(o["output"])
        partial = target.with_name(f".{target.name}.partial")
        partial.write_text("".join(f"{line}\n" for line in lines))
        partial.replace(target)  # whole or not at all
        self.stderr.write(f"wrote {o['output']}; verify it offline with scripts/verify_trust_export.py "
                          f"{o['output']} --public-keys {settings.HITL_TRUST_PUBLIC_KEYS}")

    def rotate_trust_key(self, o: dict[str, Any]) -> None:
        old, new = rotate_signing_key()
        self.stdout.write(f"trust events are now signed with key {new} (was {old}); copy "
                          f"{settings.HITL_TRUST_KEY_FILE} and {settings.HITL_TRUST_PUBLIC_KEYS} to every host")

    def _user(self, username: str) -> AbstractBaseUser:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r} (create one in the admin)")
        return user

    def add_member(self, o: dict[str, Any]) -> None:
        project, user = self._project(o["project"]), self._user(o["user"])
        membership = membership_set(project=project, user=user, role=o["role"], actor=ACTOR)
        role = membership.get_role_display().lower()
        self.stdout.write(f"{user.get_username()} is {role} of {project.slug}")

    def remove_member(self, o: dict[str, Any]) -> None:
        project, user = self._project(o["project"]), self._user(o["user"])
        removed = membership_remove(project=project, user=user, actor=ACTOR)
        self.stdout.write(f"removed {user.get_username()} from {project.slug}" if removed
                          else f"{user.get_username()} was no member of {project.slug}")

    def members(self, o: dict[str, Any]) -> None:
        project = self._project(o["project"])
        rows = selectors.memberships_list(project)
        for membership in rows:
            self.stdout.write(f"{membership.user.get_username():<30} {membership.role}")
        if not rows:
            self.stdout.write(f"{project.slug} has no members")

    def golden_set(self, o: dict[str, Any]) -> None:
        project = self._project(o["project"])
        if o["propose"] is not None:
            batch = golden_set_propose(project=project, size=o["propose"], requested_by=ACTOR)
            self.stdout.write(f"queued golden-set review batch {batch.id} ({batch.size} random items); label them, "
                              "then freeze a version with --freeze --reason ...")
            return
        if o["freeze"]:
            golden = golden_set_freeze(project=project, actor=ACTOR, reason=o["reason"], from_audit=o["from_audit"])
            self.stdout.write(f"froze golden set v{golden.version}: {len(golden.item_ids)} items, "
                              f"sha256 {golden.items_sha256}")
            return
        for golden in selectors.golden_sets_list(project):
            self.stdout.write(f"golden set v{golden.version}: {len(golden.item_ids)} items, frozen "
                              f"{golden.frozen_at:%Y-%m-%d %H:%M} by {golden.created_by}: {golden.reason}")

    def _cycle_as(self, o: dict[str, Any], action: Action) -> tuple[RetrainingCycle, AbstractBaseUser]:
        project, user = self._project(o["project"]), self._user(o["user"])
        role_required(project=project, user=user, action=action)
        cycle = RetrainingCycle.objects.filter(project=project, number=o["cycle"]).first()
        if cycle is None:
            raise CommandError(f"no cycle {o['cycle']} in {project.slug}")
        return cycle, user

    def approve_cycle(self, o: dict[str, Any]) -> None:
        cycle, user = self._cycle_as(o, Action.APPROVE)
        cycle = cycle_approve(cycle_id=cycle.id, actor=user.get_username(), reason=o["reason"])
        self.stdout.write(f"cycle {cycle.number}: {cycle.candidate_version.name} promoted ({cycle.decision_reason})")

    def reject_cycle(self, o: dict[str, Any]) -> None:
        cycle, user = self._cycle_as(o, Action.APPROVE)
        cycle = cycle_reject(cycle_id=cycle.id, actor=user.get_username(), reason=o["reason"])
        self.stdout.write(f"cycle {cycle.number}: {cycle.candidate_version.name} rejected ({cycle.decision_reason})")

    def rollback(self, o: dict[str, Any]) -> None:
        project, user = self._project(o["project"]), self._user(o["user"])
        role_required(project=project, user=user, action=Action.ROLLBACK)
        version = model_version_rollback(project=project, name=o["model_version"], actor=user.get_username(),
                                         reason=o["reason"])
        self.stdout.write(f"{project.slug}: {version.name} is production again")

    def explain(self, o: dict[str, Any]) -> None:
        project = self._project(o["project"])
        version = ModelVersion.objects.filter(project=project, name=o["model"]).first()
        if version is None:
            raise CommandError(f"no model version {o['model']!r} in {project.slug}")
        for line in explain_lines(selectors.model_explain(version)):
            self.stdout.write(line)


    def monitor(self, o: dict[str, Any]) -> None:
        project = self._project(o["project"])
        if o["webhook_key"]:
            self.stdout.write(alert_webhook_key(project).decode())
            return
        run = project_monitor(project_id=project.id)
        self.stdout.write(f"{project.slug}: window {run.window_start:%Y-%m-%d %H:%M}-{run.window_end:%H:%M} UTC, "
                          f"{run.windows_measured} measured now, {len(run.alert_ids)} new alert(s)"
                          + (f"; {run.missed_windows} missed window(s) before it judged too" if run.missed_windows else ""))
        for alert in selectors.alerts_list(project).filter(pk__in=run.alert_ids):
            self.stdout.write(f"  alert {alert.pk}: {alert.message}")
        if run.action_detail:
            self.stdout.write(f"  action: {run.action_detail}")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _interval(i: dict | None) -> str:
    return "-" if not i else f"{i['estimate']:.3f} [{i['lower']:.3f}, {i['upper']:.3f}]"


def explain_lines(e: dict) -> list[str]:
    """``selectors.model_explain`` as text."""
    labels = e["training_labels"]
    lines = [f"{e['model_version']} ({e['architecture']}) is {e['stage']}"
             + (f", promoted {e['promoted_at'][:19]} by {e['promoted_by']}" if e["promoted_at"] else ""),
             "parents: " + (" <- ".join(p["name"] for p in e["parents"]) or "none (trained from scratch or imported)"),
             f"learned from {labels['count']} labels; by source "
             + ", ".join(f"{k}: {v}" for k, v in sorted(labels["by_source"].items()))
             + "; by reviewer " + ", ".join(f"{k or '-'}: {v}" for k, v in sorted(labels["by_reviewer"].items())),
             f"label manifest sha256 {labels['manifest_sha256']} "
             + ("(matches the trust history)" if labels["manifest_matches_trust_history"]
                else f"(trust history recorded {labels['recorded_manifest_sha256']})")]
    if e["produced_by_cycle"]:
        c = e["produced_by_cycle"]
        lines.append(f"cycle {c['number']}: {c['decision'] or c['status']}"
                     + (f" by {c['decided_by']}" if c["decided_by"] else "") + f": {c['decision_reason']}")
        for rule in c["gate"].get("rules", []):
            lines.append(f"  rule {rule['rule']:<24} {'pass' if rule['passed'] else 'FAIL'}  {rule['detail']}")
    for s in e["evaluations"]:
        golden = f" v{s['golden_set_version']}" if s["golden_set_version"] else ""
        lines.append(f"evaluated in cycle {s['cycle']} as {s['role']} on {s['eval_set']}{golden} ({s['n_items']} "
                     f"items): accuracy {_interval(s['intervals'].get('accuracy'))}, macro-F1 "
                     f"{_interval(s['intervals'].get('macro_f1'))}")
    for t in e["trust_events"]:
        lines.append(f"trust #{t['sequence']} {t['kind']} by {t['actor']} at {t['created_at'][:19]}")
    return lines
