"""Access per project: members with roles, and the one place that decides what a role may do.

Every view, API endpoint and queue asks `role_required`; nothing else compares roles. Staff and
superusers get no shortcut here: a superuser manages memberships in the admin, and sees or
changes a project only as one of its members.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from hitl import selectors
from hitl.errors import Conflict, InvalidInput
from hitl.models import Project, ProjectMembership, ProjectRole

log = logging.getLogger(__name__)

ROLE_ORDER: tuple[ProjectRole, ...] = (
    ProjectRole.VIEWER,
    ProjectRole.REVIEWER,
    ProjectRole.ML_ENGINEER,
    ProjectRole.ADMIN,
)


class Action(StrEnum):
    VIEW = "view"
    LABEL = "label"
    SELECT_BATCH = "select_batch"
    START_CYCLE = "start_cycle"
    CANCEL_CYCLE = "cancel_cycle"
    APPROVE = "approve"
    ROLLBACK = "rollback"
    CHANGE_SETTINGS = "change_settings"
    MANAGE_MEMBERS = "manage_members"
    IMPORT_ITEMS = "import_items"
    ACKNOWLEDGE_ALERT = "acknowledge_alert"
    VERIFY_TRUST = "verify_trust"


# The one map from what a person wants to do to the lowest role that may do it.
MINIMUM_ROLE: dict[Action, ProjectRole] = {
    Action.VIEW: ProjectRole.VIEWER,
    Action.LABEL: ProjectRole.REVIEWER,
    Action.SELECT_BATCH: ProjectRole.ML_ENGINEER,
    Action.START_CYCLE: ProjectRole.ML_ENGINEER,
    Action.CANCEL_CYCLE: ProjectRole.ML_ENGINEER,
    Action.APPROVE: ProjectRole.ML_ENGINEER,
    Action.ROLLBACK: ProjectRole.ML_ENGINEER,
    Action.CHANGE_SETTINGS: ProjectRole.ADMIN,
    Action.MANAGE_MEMBERS: ProjectRole.ADMIN,
    # imported labels skip review (held-out items included): a project admin's decision
    Action.IMPORT_ITEMS: ProjectRole.ADMIN,
    # acknowledging closes a monitoring alert for everyone: for those who can act on it (select a
    # review batch, start a cycle), not for every reviewer who happens to see it
    Action.ACKNOWLEDGE_ALERT: ProjectRole.ML_ENGINEER,
    # verifying the whole chain at once costs CPU in the web process (pages check what is new)
    Action.VERIFY_TRUST: ProjectRole.ML_ENGINEER,
}


class NotAMember(Exception):
    """The user is no member of the project: callers answer as if it did not exist (a 404)."""


class RoleTooLow(Exception):
    """A member whose role may not do this (a 403); the message names the role needed."""


def role_allows(role: str | None, action: Action) -> bool:
    return role is not None and ROLE_ORDER.index(ProjectRole(role)) >= ROLE_ORDER.index(
        MINIMUM_ROLE[action]
    )


def actions_allowed(role: str | None) -> set[str]:
    """What a role may do, for pages that show only the actions a member can take."""
    return {action.value for action in Action if role_allows(role, action)}


def role_required(
    *, project: Project, user: AbstractBaseUser | None, action: Action
) -> ProjectRole:
    """The user's role in the project if it allows the action; raises NotAMember or RoleTooLow."""
    role = selectors.membership_role(project_id=project.id, user=user)
    if role is None:
        raise NotAMember(f"no project {project.slug!r}")
    if not role_allows(role, action):
        needed = MINIMUM_ROLE[action]
        raise RoleTooLow(
            f"{action.value.replace('_', ' ')} needs the {needed.label.lower()} role or higher "
            f"in {project.slug}; you are {ProjectRole(role).label.lower()}"
        )
    return ProjectRole(role)


def _check_role(role: object) -> ProjectRole:
    if role not in ProjectRole.values:
        raise InvalidInput.single(
            "role", f"unknown role {role!r}; use one of {', '.join(ProjectRole.values)}"
        )
    return ProjectRole(role)


def _keep_an_admin(project: Project, user: AbstractBaseUser) -> None:
    """A project that has admins keeps at least one: else nobody could manage it but an operator."""
    admins = ProjectMembership.objects.filter(project=project, role=ProjectRole.ADMIN)
    if admins.filter(user=user).exists() and not admins.exclude(user=user).exists():
        raise Conflict(f"{user.get_username()} is the last admin of {project.slug}: "
                       "make someone else admin first")


@transaction.atomic
def membership_set(
    *, project: Project, user: AbstractBaseUser, role: str, actor: str
) -> ProjectMembership:
    """Make the user a member with this role (adding or changing it); the same role again
    changes nothing."""
    role = _check_role(role)
    # One membership change per project at a time (the last-admin rule reads the others).
    Project.objects.select_for_update().get(pk=project.pk)
    membership = ProjectMembership.objects.filter(project=project, user=user).first()
    if membership is not None and membership.role == role:
        return membership
    if membership is None:
        membership = ProjectMembership.objects.create(project=project, user=user, role=role)
    else:
        if role != ProjectRole.ADMIN:
            _keep_an_admin(project, user)
        membership.role = role
        membership.save(update_fields=["role"])
    log.info("%s made %s %s of %s", actor, user.get_username(), role.value, project.slug)
    return membership


@transaction.atomic
def membership_remove(*, project: Project, user: AbstractBaseUser, actor: str) -> bool:
    """Remove the user from the project; True if they were a member (removing twice is harmless)."""
    Project.objects.select_for_update().get(pk=project.pk)
    _keep_an_admin(project, user)
    deleted, _ = ProjectMembership.objects.filter(project=project, user=user).delete()
    if deleted:
        log.info("%s removed %s from %s", actor, user.get_username(), project.slug)
    return bool(deleted)
