"""Access per project: every URL pattern of the API and the web, for every kind of caller.

The matrix walks Django's URL resolver, so a new endpoint without a rule here fails
`test_every_url_pattern_has_an_access_rule`; each rule's expected answers then come from one
place: the role the action needs (hitl.services.access.MINIMUM_ROLE).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.test import Client, override_settings
from django.urls import URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.views import APIView

from hitl.api.views import ProjectScoped
from hitl.errors import InvalidInput
from hitl.models import (
    Deployment,
    Item,
    Label,
    LabelSource,
    ModelVersion,
    Project,
    ProjectMembership,
    ProjectRole,
    ReviewAnswer,
    ReviewTask,
    Split,
)
from hitl.selectors import projects_visible
from hitl.services.access import (
    MINIMUM_ROLE,
    ROLE_ORDER,
    Action,
    NotAMember,
    RoleTooLow,
    membership_set,
    role_required,
)
from hitl.services.cycles import cycle_request
from hitl.services.ingestion import predictions_ingest
from hitl.services.labels import label_submit
from hitl.services.monitoring import project_monitor
from hitl.services.projects import deployment_create, project_create
from hitl.services.selection import review_batch_request
from tests.conftest import LABELS, make_version, member, token_client
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db

MEMBER_ROLES = {
    "viewer": ProjectRole.VIEWER,
    "reviewer": ProjectRole.REVIEWER,
    "ml_engineer": ProjectRole.ML_ENGINEER,
    "admin": ProjectRole.ADMIN,
}
CALLERS = [
    "anonymous",
    "non_member",
    *MEMBER_ROLES,
    "staff_non_member",
    "deployment",
    "other_deployment",
]
PEOPLE = {"non_member", *MEMBER_ROLES, "staff_non_member"}
DEPLOYMENTS = {"deployment", "other_deployment"}


@dataclass(frozen=True)
class Rule:
    """How an endpoint decides: ``kind`` says who may call it at all, ``action`` what role in the
    project it needs (project-scoped endpoints only)."""

    kind: str  # api | web | api_person | web_person | ingest | public | capability | admin_site
    action: Action | None = None


def api(action: Action) -> Rule:
    return Rule("api", action)


def web(action: Action) -> Rule:
    return Rule("web", action)


# Every URL pattern -> method -> rule. A pattern missing here fails the coverage test.
RULES: dict[str, dict[str, Rule]] = {
    "schema": {"GET": Rule("api_person")},
    "api-docs": {"GET": Rule("web_person")},
    "predictions-ingest": {"POST": Rule("ingest")},
    # a deployment downloads the model it should run: deployment tokens only, like ingestion
    "deployment-model": {"GET": Rule("ingest")},
    "deployment-model-file": {"GET": Rule("ingest")},
    "images-import": {"POST": api(Action.IMPORT_ITEMS)},
    "projects": {"GET": Rule("api_person")},
    "project": {"GET": api(Action.VIEW), "PATCH": api(Action.CHANGE_SETTINGS)},
    "model-versions": {"GET": api(Action.VIEW)},
    "deployments": {"GET": api(Action.VIEW)},
    "members": {
        "GET": api(Action.MANAGE_MEMBERS),
        "POST": api(Action.MANAGE_MEMBERS),
        "DELETE": api(Action.MANAGE_MEMBERS),
    },
    "items": {"GET": api(Action.VIEW)},
    "predictions": {"GET": api(Action.VIEW)},
    "review-queue": {"GET": api(Action.VIEW)},
    "review-batches": {"POST": api(Action.SELECT_BATCH)},
    "cycles": {"GET": api(Action.VIEW), "POST": api(Action.START_CYCLE)},
    "trust": {"GET": api(Action.VIEW)},
    "audit": {"GET": api(Action.VIEW)},
    "review-batch": {"GET": api(Action.VIEW)},
    "item-labels": {"GET": api(Action.VIEW), "POST": api(Action.LABEL)},
    "item-image": {"GET": api(Action.VIEW)},
    "cycle": {"GET": api(Action.VIEW)},
    "cycle-cancel": {"POST": api(Action.CANCEL_CYCLE)},
    "cycle-approve": {"POST": api(Action.APPROVE)},
    "cycle-reject": {"POST": api(Action.APPROVE)},
    "rollback": {"POST": api(Action.ROLLBACK)},
    "golden-sets": {"GET": api(Action.VIEW), "POST": api(Action.APPROVE)},
    "model-version-explain": {"GET": api(Action.VIEW)},
    "alerts": {"GET": api(Action.VIEW)},
    "alert-acknowledge": {"POST": api(Action.ACKNOWLEDGE_ALERT)},
    "monitor-windows": {"GET": api(Action.VIEW)},
    "login": {"GET": Rule("public")},
    "logout": {"POST": Rule("public")},
    "web:projects": {"GET": Rule("web_person")},
    "web:review-queue": {"GET": web(Action.VIEW)},
    "web:cycles": {"GET": web(Action.VIEW)},
    "web:review-task-label": {"POST": web(Action.LABEL)},
    "web:cycle": {"GET": web(Action.VIEW)},
    "web:cycle-decide": {"POST": web(Action.APPROVE)},
    "web:rollback": {"POST": web(Action.ROLLBACK)},
    "web:review": {"GET": web(Action.LABEL)},
    "web:review-lease": {"POST": web(Action.LABEL)},
    "web:review-task-answer": {"POST": web(Action.LABEL)},
    "web:label-undo": {"POST": web(Action.LABEL)},
    "web:item": {"GET": web(Action.VIEW)},
    "web:answer-undo": {"POST": web(Action.LABEL)},
    "web:conflicts": {"GET": web(Action.VIEW)},
    "web:conflict-decide": {"POST": web(Action.LABEL)},
    "web:reviewers": {"GET": web(Action.VIEW)},
    "web:alerts": {"GET": web(Action.VIEW)},
    "web:alert-acknowledge": {"POST": web(Action.ACKNOWLEDGE_ALERT)},
    "web:dashboard": {"GET": web(Action.VIEW)},
    "web:models": {"GET": web(Action.VIEW)},
    "web:model-artifact": {"GET": web(Action.VIEW)},
    "web:trust": {"GET": web(Action.VIEW)},
    "web:trust-export": {"GET": web(Action.VIEW)},
    "web:trust-verify": {"POST": web(Action.VERIFY_TRUST)},
    "web:cycle-progress": {"GET": web(Action.VIEW)},
    "web:cycle-cancel": {"POST": web(Action.CANCEL_CYCLE)},
    # Label Studio's side: a shared secret or a signed URL is the credential, not a login.
    "labeling:webhook": {"POST": Rule("capability")},
    "labeling:image": {"GET": Rule("capability")},
    "admin": {"GET": Rule("admin_site")},
}


def _routes(resolver: URLResolver, namespace: str = "") -> list[str]:
    names = []
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            if str(pattern.pattern) == "admin/":
                names.append("admin")  # Django's admin: its own staff and permission checks
                continue
            inner = ":".join(filter(None, [namespace, pattern.namespace]))
            names.extend(_routes(pattern, inner))
        else:
            names.append(f"{namespace}:{pattern.name}" if namespace else str(pattern.name))
    return names


def test_every_url_pattern_has_an_access_rule() -> None:
    routes = _routes(get_resolver())
    assert len(routes) == len(set(routes)), "two URL patterns share a name"
    assert set(routes) - set(RULES) == set(), "new endpoints: give each an access rule in RULES"
    assert set(RULES) - set(routes) == set(), "rules for endpoints that no longer exist"


@pytest.fixture()
def world(project, version, deployment_and_token, ingest):
    """A project with items, a selected review batch, a cycle and a member of each role; another
    project with its own deployment; a staff superuser who is nobody's member."""
    result = ingest(range(8))
    batch = review_batch_request(project=project, requested_by="t", size=3, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    cycle = cycle_request(project=project, requested_by="t")
    users = {name: member(project, name, role) for name, role in MEMBER_ROLES.items()}
    other = project_create(slug=f"{project.slug}-other", name="Other", labels=list(LABELS))
    other_version = make_version(other, "v-other")
    _, other_token = deployment_create(
        project=other, name="cam", environment="edge", model_version=other_version, storage_prefix="cam"
    )
    users["non_member"] = member(
        other, "nina", ProjectRole.ADMIN
    )  # an admin elsewhere is nobody here
    users["staff_non_member"] = get_user_model().objects.create_user(
        "root", password="root-pass-123", is_staff=True, is_superuser=True
    )
    get_user_model().objects.create_user("newbie", password="newbie-pass-123")
    train_item = (
        Item.objects.filter(pk__in=result.item_ids, split=Split.TRAIN).order_by("pk").first()
    )
    unqueued = Item.objects.filter(pk__in=result.item_ids).exclude(review_tasks__batch=batch).first()
    project.monitoring = {"min_predictions_per_window": 1, "action": "none"}  # an alert to address
    project.save(update_fields=["monitoring"])
    # serving for a day: the last complete window (which it sent nothing in) ended after it existed
    Deployment.objects.filter(project=project).update(created_at=timezone.now() - timedelta(days=1))
    [alert_id] = project_monitor(project_id=project.id).alert_ids
    return {
        "project": project,
        "item": train_item,
        "batch": batch,
        "task": batch.tasks.order_by("rank").first(),
        "cycle": cycle,
        "label": label_submit(item_id=unqueued.pk, value="bag", source=LabelSource.IMPORT,
                              reviewer_name="import"),
        "answer": ReviewAnswer.objects.create(task=batch.tasks.order_by("rank").last(), reviewer=users["admin"],
                                              reviewer_name="admin", value="bag"),
        "users": users,
        "tokens": {"deployment": deployment_and_token[1], "other_deployment": other_token},
        "alert": alert_id,
    }


def _kwargs(name: str, w: dict) -> dict:
    by_route = {
        "review-batch": {"pk": w["batch"].pk},
        "item-labels": {"pk": w["item"].pk},
        "item-image": {"pk": w["item"].pk},
        "cycle": {"pk": w["cycle"].pk},
        "cycle-cancel": {"pk": w["cycle"].pk},
        "cycle-approve": {"pk": w["cycle"].pk},
        "cycle-reject": {"pk": w["cycle"].pk},
        "model-version-explain": {"slug": w["project"].slug, "name": "v1"},
        "web:review-task-label": {"pk": w["task"].pk},
        "web:cycle": {"pk": w["cycle"].pk},
        "web:cycle-decide": {"pk": w["cycle"].pk},
        "web:review-task-answer": {"pk": w["task"].pk},
        "web:label-undo": {"pk": w["label"].pk},
        "web:item": {"pk": w["item"].pk},
        "web:answer-undo": {"pk": w["answer"].pk},
        "web:conflict-decide": {"pk": w["task"].pk},
        "web:cycle-progress": {"pk": w["cycle"].pk},
        "web:cycle-cancel": {"pk": w["cycle"].pk},
        "web:model-artifact": {"slug": w["project"].slug, "name": "v1", "kind": "weights"},
        "labeling:image": {"item_id": w["item"].pk, "signature": "forged"},
        "labeling:webhook": {"link_id": 1},
        "deployment-model-file": {"name": "model.json"},
        "alert-acknowledge": {"pk": w["alert"]},
        "web:alert-acknowledge": {"pk": w["alert"]},
    }
    if name in by_route:
        return by_route[name]
    pattern = next(p for p in _patterns() if p[0] == name)[1]
    kwargs = {}
    for key in pattern.converters:
        if key != "slug":
            pytest.fail(f"{name}: say which object its {key!r} names in _kwargs")
        kwargs[key] = w["project"].slug
    return kwargs


def _patterns(resolver: URLResolver | None = None, namespace: str = "") -> list:
    found = []
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            if str(pattern.pattern) != "admin/":
                found.extend(
                    _patterns(pattern, ":".join(filter(None, [namespace, pattern.namespace])))
                )
        else:
            found.append(
                (f"{namespace}:{pattern.name}" if namespace else pattern.name, pattern.pattern)
            )
    return found


BODIES = {
    ("project", "PATCH"): {"batch_size": 50},
    ("members", "POST"): {"user": "newbie", "role": "viewer"},
    ("review-batches", "POST"): {"size": 2},
    ("cycles", "POST"): {},
    ("item-labels", "POST"): {"value": "coat"},
    ("predictions-ingest", "POST"): {"predictions": []},
    ("web:review-task-label", "POST"): {"value": "coat"},
    ("web:review-task-answer", "POST"): {"value": "coat"},
    ("web:conflict-decide", "POST"): {"value": "coat"},
}


def _client(caller: str, w: dict, rule: Rule) -> Client:
    is_web = rule.kind in {"web", "web_person", "public", "capability", "admin_site"}
    client = Client() if is_web else APIClient()
    if caller in PEOPLE:
        if is_web:
            client.force_login(w["users"][caller])
        else:
            client = token_client(w["users"][caller])
    elif caller in DEPLOYMENTS:
        client.defaults["HTTP_AUTHORIZATION"] = f"Deployment {w['tokens'][caller]}"
    return client


def _call(client: Client, method: str, url: str, body: dict | None):
    if method == "GET":
        return client.get(url)
    if method == "DELETE":
        return client.delete(url + "?user=newbie")
    if isinstance(client, APIClient):
        return getattr(client, method.lower())(url, body or {}, format="json")
    return getattr(client, method.lower())(url, body or {})


def _expected(rule: Rule, caller: str) -> int | str:
    """An exact status for a refusal, or "allowed" (the access check let it through)."""
    person = caller in PEOPLE
    if rule.kind == "public":
        return "allowed"
    if rule.kind == "capability":
        return "refused"  # no secret, a forged signature: nobody gets in, whoever they are
    if rule.kind == "admin_site":
        return "allowed" if caller == "staff_non_member" else "admin_login"
    if rule.kind in {"web", "web_person"} and not person:
        return "login"  # a deployment token is no login for the pages
    if rule.kind == "ingest":
        return "allowed" if caller in DEPLOYMENTS else (401 if caller == "anonymous" else 403)
    if caller == "anonymous":
        return 401
    if caller in DEPLOYMENTS:
        return 403  # deployments may only send predictions
    if rule.kind in {"api_person", "web_person"}:
        return "allowed"
    if caller not in MEMBER_ROLES:
        return 404  # non-members and staff who are no members: as if the project did not exist
    needed = ROLE_ORDER.index(MINIMUM_ROLE[rule.action])
    return "allowed" if ROLE_ORDER.index(MEMBER_ROLES[caller]) >= needed else 403


MATRIX = [(name, method) for name, methods in RULES.items() for method in methods]


def _mismatch(rule: Rule, caller: str, response) -> str | None:
    """What is wrong with this answer, or None."""
    expected = _expected(rule, caller)
    status, location = response.status_code, response.get("Location", "")
    if status >= 500:
        return "a server error"
    if expected == "allowed":
        if status in (401, 403, 404) or (rule.kind != "public" and "login" in location):
            return "refused, expected to be let through"
        return None
    if expected == "login":
        return (
            None
            if status == 302 and location.startswith("/login/")
            else "expected a redirect to /login/"
        )
    if expected == "admin_login":
        return (
            None
            if status == 302 and location.startswith("/admin/login/")
            else "expected the admin login"
        )
    if expected == "refused":
        return None if status in (400, 403, 404) else "expected a refusal"
    if status != expected:
        return f"expected {expected}"
    if rule.kind == "api" and not response.json().get("detail"):
        return "no JSON detail"
    if expected == 403 and caller in MEMBER_ROLES and rule.action is not None:
        text = response.json()["detail"] if rule.kind == "api" else response.content.decode()
        if f"needs the {MINIMUM_ROLE[rule.action].label.lower()} role" not in text:
            return "the 403 does not name the role needed"
    return None


def test_access_matrix(world) -> None:
    """Every endpoint and method, as every kind of caller: the answer the rule predicts. One
    setup for the whole matrix; the calls that are let through may change state (a cycle
    cancelled, a member added), which changes no access decision."""
    problems = []
    routes = set(_routes(get_resolver()))  # a rule without its route fails the coverage test
    for name, method in [(name, method) for name, method in MATRIX if name in routes]:
        rule = RULES[name][method]
        url = "/admin/" if name == "admin" else reverse(name, kwargs=_kwargs(name, world))
        for caller in CALLERS:
            response = _call(_client(caller, world, rule), method, url, BODIES.get((name, method)))
            problem = _mismatch(rule, caller, response)
            if problem:
                problems.append(f"{method} {url} as {caller}: {response.status_code}, {problem}")
    assert problems == []


def test_a_non_member_learns_nothing_a_stranger_would_not(world) -> None:
    """The 404 a non-member gets is the one for a project or object that does not exist."""
    client = token_client(world["users"]["staff_non_member"])
    slug = world["project"].slug
    hidden = client.get(f"/api/v1/projects/{slug}/").json()
    missing = client.get("/api/v1/projects/no-such-project/").json()
    assert hidden == {**missing, "detail": hidden["detail"], "errors": hidden["errors"]}
    assert hidden["detail"] == f"no project {slug!r}"
    assert missing["detail"] == "no project 'no-such-project'"
    item = world["item"].pk
    assert client.get(f"/api/v1/items/{item}/labels/").json()["detail"] == f"no item {item}"
    assert client.get("/api/v1/items/99999999/labels/").json()["detail"] == "no item 99999999"


def test_staff_and_superusers_are_no_shortcut(world) -> None:
    root = world["users"]["staff_non_member"]
    with pytest.raises(NotAMember):
        role_required(project=world["project"], user=root, action=Action.VIEW)
    assert token_client(root).get("/api/v1/projects/").json()["results"] == []
    client = Client()
    client.force_login(root)
    assert world["project"].slug not in client.get("/").content.decode()


def test_people_see_only_their_projects(world) -> None:
    nina = token_client(world["users"]["non_member"]).get("/api/v1/projects/").json()
    assert [p["slug"] for p in nina["results"]] == [f"{world['project'].slug}-other"] and nina[
        "count"
    ] == 1
    client = Client()
    client.force_login(world["users"]["viewer"])
    page = client.get("/").content.decode()
    assert world["project"].slug in page and f"{world['project'].slug}-other" not in page
    assert "Viewer" in page
    visible = list(
        projects_visible(world["users"]["viewer"])
    )  # one row, with the viewer's own role
    assert [(p.slug, p.role) for p in visible] == [(world["project"].slug, "viewer")]


def test_pages_show_only_the_actions_a_role_may_take(world) -> None:
    url = f"/projects/{world['project'].slug}/review/"
    client = Client()
    client.force_login(world["users"]["viewer"])
    page = client.get(url).content.decode()
    assert page.count('class="card"') == 3 and "button" not in page.split('class="grid"')[1]
    assert "labeling needs the reviewer role" in page
    client.force_login(world["users"]["reviewer"])
    page = client.get(url).content.decode()
    assert page.count('class="accept"') == 3 and page.count('class="secondary correct"') == 3


def test_role_order_and_the_one_map() -> None:
    assert [r.value for r in ROLE_ORDER] == ["viewer", "reviewer", "ml_engineer", "admin"]
    assert set(MINIMUM_ROLE) == set(Action)


def test_role_required_names_the_role_needed(world) -> None:
    with pytest.raises(RoleTooLow, match="start cycle needs the ml engineer role or higher"):
        role_required(
            project=world["project"], user=world["users"]["reviewer"], action=Action.START_CYCLE
        )
    assert (
        role_required(
            project=world["project"], user=world["users"]["admin"], action=Action.START_CYCLE
        )
        == ProjectRole.ADMIN
    )


# --- members: API, commands, service rules ----------------------------------------------------


def test_members_api(world) -> None:
    slug = world["project"].slug
    url = f"/api/v1/projects/{slug}/members/"
    admin = token_client(world["users"]["admin"])
    listed = admin.get(url).json()
    assert listed["count"] == 4
    assert {m["user"]: m["role"] for m in listed["results"]} == {
        "viewer": "viewer",
        "reviewer": "reviewer",
        "ml_engineer": "ml_engineer",
        "admin": "admin",
    }
    added = admin.post(url, {"user": "newbie", "role": "reviewer"}, format="json")
    assert added.status_code == 201 and added.json()["role"] == "reviewer"
    newbie = get_user_model().objects.get(username="newbie")
    assert token_client(newbie).get(f"/api/v1/projects/{slug}/").status_code == 200
    assert (
        admin.post(url, {"user": "newbie", "role": "ml_engineer"}, format="json").status_code == 201
    )
    assert ProjectMembership.objects.get(user=newbie).role == "ml_engineer"
    bad = admin.post(url, {"user": "newbie", "role": "owner"}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "role"
    unknown = admin.post(url, {"user": "ghost", "role": "viewer"}, format="json")
    assert unknown.status_code == 400 and unknown.json()["errors"][0] == {
        "field": "user",
        "message": "no user 'ghost'",
    }
    assert admin.delete(url).json()["errors"][0]["field"] == "user"
    assert admin.delete(url + "?user=newbie").status_code == 204
    assert admin.delete(url + "?user=newbie").status_code == 204  # twice is harmless
    assert token_client(newbie).get(f"/api/v1/projects/{slug}/").status_code == 404
    last = admin.delete(url + "?user=admin")
    assert last.status_code == 409 and "last admin" in last.json()["detail"]
    demote = admin.post(url, {"user": "admin", "role": "viewer"}, format="json")
    assert demote.status_code == 409
    assert ProjectMembership.objects.get(user=world["users"]["admin"]).role == "admin"


def test_member_commands(project) -> None:
    get_user_model().objects.create_user("carol")
    out = StringIO()
    call_command(
        "hitl",
        "add-member",
        "--project",
        project.slug,
        "--user",
        "carol",
        "--role",
        "ml_engineer",
        stdout=out,
    )
    assert "carol is ml engineer of" in out.getvalue()
    call_command("hitl", "members", "--project", project.slug, stdout=out)
    assert out.getvalue().splitlines()[-1].split() == ["carol", "ml_engineer"]
    with pytest.raises(CommandError, match="no user 'dave'"):
        call_command(
            "hitl", "add-member", "--project", project.slug, "--user", "dave", "--role", "viewer"
        )
    with pytest.raises(CommandError, match="invalid choice"):
        call_command(
            "hitl", "add-member", "--project", project.slug, "--user", "carol", "--role", "boss"
        )
    call_command("hitl", "remove-member", "--project", project.slug, "--user", "carol", stdout=out)
    assert "removed carol" in out.getvalue()
    assert not ProjectMembership.objects.filter(project=project).exists()


def test_one_membership_per_user_and_known_roles_only(project, reviewer) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        ProjectMembership.objects.create(project=project, user=reviewer, role="viewer")
    other = get_user_model().objects.create_user("zed")
    with pytest.raises(IntegrityError), transaction.atomic():
        ProjectMembership.objects.create(project=project, user=other, role="owner")
    membership_set(
        project=project, user=reviewer, role="reviewer", actor="t"
    )  # same role: no change
    assert ProjectMembership.objects.filter(project=project, user=reviewer).count() == 1


# --- held-out labels only through review tasks ------------------------------------------------


def test_held_out_items_take_labels_only_through_a_review_task(
    project, reviewer_client, ingest
) -> None:
    result = ingest(range(30))
    held_out = Item.objects.filter(pk__in=result.item_ids, split=Split.HOLDOUT).order_by("pk")
    assert held_out.count() >= 2
    item, queued = held_out[0], held_out[1]
    refused = reviewer_client.post(
        f"/api/v1/items/{item.pk}/labels/", {"value": "coat"}, format="json"
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "review_task"
    assert "held out" in refused.json()["errors"][0]["message"]
    assert not Label.objects.filter(item=item).exists()

    batch = review_batch_request(project=project, requested_by="t", size=30, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    task = ReviewTask.objects.get(batch=batch, item=queued)
    response = reviewer_client.post(
        f"/api/v1/items/{queued.pk}/labels/",
        {"value": "coat", "review_task": task.id},
        format="json",
    )
    assert response.status_code == 201 and response.json()["review_task"] == task.id
    # Even with an open review task, a label that does not name it is refused.
    other_task = ReviewTask.objects.filter(
        batch=batch, item__split=Split.HOLDOUT, status="open"
    ).first()
    refused = reviewer_client.post(
        f"/api/v1/items/{other_task.item_id}/labels/", {"value": "bag"}, format="json"
    )
    assert refused.status_code == 400


def test_the_web_queue_labels_held_out_items_through_their_task(project, reviewer, ingest) -> None:
    result = ingest(range(30))
    batch = review_batch_request(project=project, requested_by="t", size=30, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    task = ReviewTask.objects.filter(batch=batch, item__split=Split.HOLDOUT).first()
    assert task is not None and task.item_id in result.item_ids
    client = Client()
    client.force_login(reviewer)
    client.post(f"/review-tasks/{task.id}/label", {"value": "coat"})
    assert Label.objects.get(item_id=task.item_id).review_task_id == task.id


# --- deployments --------------------------------------------------------------------------------


def test_a_deployment_writes_only_into_its_own_project(world, write_images) -> None:
    project = world["project"]
    other = Project.objects.get(slug=f"{project.slug}-other")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Deployment {world['tokens']['other_deployment']}")
    paths = write_images([40], folder="cam")
    payload = {
        "model_version": "v1",
        "predictions": [{"image_path": paths[0], "probabilities": [0.1] * 10}],
    }
    response = client.post("/api/v1/predictions/", payload, format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "model_version"
    assert "unknown model version 'v1'" in response.json()["errors"][0]["message"]
    response = client.post(
        "/api/v1/predictions/", {**payload, "model_version": "v-other"}, format="json"
    )
    assert response.status_code == 201
    assert set(
        Item.objects.filter(pk__in=response.json()["item_ids"]).values_list("project_id", flat=True)
    ) == {other.id}
    with pytest.raises(InvalidInput, match="another project"):  # the service refuses it too
        predictions_ingest(
            deployment=other.deployments.get(),
            payload=payload,
            model_version=ModelVersion.objects.get(project=project, name="v1"),
        )


# --- schema and pagination ------------------------------------------------------------------


def test_schema_and_swagger_need_a_login(client, reviewer) -> None:
    assert client.get("/api/v1/schema/").status_code == 401
    docs = client.get("/api/v1/docs/")
    assert docs.status_code == 302 and docs["Location"].startswith("/login/")
    client.force_login(reviewer)
    assert client.get("/api/v1/schema/").status_code == 200
    assert client.get("/api/v1/docs/").status_code == 200


@override_settings(HITL_PUBLIC_API_SCHEMA=True)
def test_a_setting_opens_the_schema(client) -> None:
    assert client.get("/api/v1/schema/?format=json").status_code == 200
    assert client.get("/api/v1/docs/").status_code == 200


def test_every_list_endpoint_is_paginated(reviewer_client) -> None:
    schema = reviewer_client.get("/api/v1/schema/?format=json").json()
    components = schema["components"]["schemas"]
    lists = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            body = operation["responses"].get("200", operation["responses"].get("201", {}))
            for media in body.get("content", {}).values():
                shape = media["schema"]
                assert shape.get("type") != "array", f"{method.upper()} {path} returns a bare list"
                name = shape.get("$ref", "").rsplit("/", 1)[-1]
                if name.startswith("Paginated"):
                    assert {"next", "previous", "results"} <= set(components[name]["properties"])
                    lists.append(path)
    assert {
        "/api/v1/projects/",
        "/api/v1/projects/{slug}/cycles/",
        "/api/v1/projects/{slug}/trust/",
        "/api/v1/projects/{slug}/audit/",
        "/api/v1/projects/{slug}/members/",
        "/api/v1/projects/{slug}/review-queue/",
        "/api/v1/items/{id}/labels/",
        "/api/v1/projects/{slug}/deployments/",
        "/api/v1/projects/{slug}/model-versions/",
    } <= set(lists)


def test_lists_come_a_page_at_a_time(world) -> None:
    client = token_client(world["users"]["viewer"])
    slug = world["project"].slug
    for url in [
        f"/api/v1/projects/{slug}/cycles/",
        f"/api/v1/projects/{slug}/audit/",
        f"/api/v1/projects/{slug}/deployments/",
        f"/api/v1/projects/{slug}/model-versions/",
        f"/api/v1/items/{world['item'].pk}/labels/",
        "/api/v1/projects/",
    ]:
        data = client.get(url).json()
        assert {"count", "next", "previous", "results"} <= set(data), url
    trust = client.get(f"/api/v1/projects/{slug}/trust/").json()
    assert trust["verified"] is True and len(trust["results"]) == trust["count"] == 1


def test_superusers_manage_members_in_the_admin(
    admin_client, project, project_admin, reviewer
) -> None:
    url = reverse("admin:hitl_project_change", args=[project.id])
    context = admin_client.get(url).context
    form = context["adminform"].form
    data = {name: "" if form[name].value() is None else form[name].value() for name in form.fields}
    rows = list(ProjectMembership.objects.filter(project=project).order_by("id"))
    prefix = context["inline_admin_formsets"][0].formset.prefix
    data.update(
        {
            f"{prefix}-TOTAL_FORMS": len(rows),
            f"{prefix}-INITIAL_FORMS": len(rows),
            f"{prefix}-MIN_NUM_FORMS": 0,
            f"{prefix}-MAX_NUM_FORMS": 1000,
        }
    )
    for i, row in enumerate(rows):
        data.update(
            {
                f"{prefix}-{i}-id": row.id,
                f"{prefix}-{i}-project": project.id,
                f"{prefix}-{i}-user": row.user_id,
                f"{prefix}-{i}-role": row.role,
            }
        )
    admin_row = rows.index(next(r for r in rows if r.user_id == project_admin.id))
    refused = admin_client.post(url, {**data, f"{prefix}-{admin_row}-role": "viewer"})
    assert (
        refused.status_code == 200 and "keep at least one project admin" in refused.content.decode()
    )
    reviewer_row = rows.index(next(r for r in rows if r.user_id == reviewer.id))
    accepted = admin_client.post(url, {**data, f"{prefix}-{reviewer_row}-role": "ml_engineer"})
    assert accepted.status_code == 302
    assert ProjectMembership.objects.get(project=project, user=reviewer).role == "ml_engineer"
    assert ProjectMembership.objects.get(project=project, user=project_admin).role == "admin"


def test_a_view_method_without_an_access_action_is_a_configuration_error() -> None:
    """A project-scoped view that gains a method must say what role it needs: no silent default."""
    class Forgetful(ProjectScoped, APIView):
        def post(self, request, slug):  # no "POST" in access
            raise AssertionError("never reached")

    view = Forgetful()
    assert view.action_for("GET") == Action.VIEW and view.action_for("HEAD") == Action.VIEW
    assert view.action_for("PUT") == Action.VIEW  # no handler: the request gets a 405
    with pytest.raises(ImproperlyConfigured, match="Forgetful names no access action for POST"):
        view.action_for("POST")
