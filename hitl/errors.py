"""Domain errors that the API and the CLI turn into clear messages."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import InterfaceError, OperationalError

# The database went away or timed out: worth a retry by Celery, never a recorded failure.
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidInput(Exception):
    """Bad input from a user or a deployment; nothing was written. Becomes a 400."""

    def __init__(self, errors: list[FieldError] | FieldError) -> None:
        self.errors = [errors] if isinstance(errors, FieldError) else list(errors)
        super().__init__("; ".join(str(e) for e in self.errors[:5]))

    @classmethod
    def single(cls, field: str, message: str) -> InvalidInput:
        return cls(FieldError(field, message))


class Conflict(Exception):
    """The request does not fit the current state (e.g. cancelling a finished cycle). A 409."""


class Unavailable(Exception):
    """The database could not take the work right now (it kept refusing a transaction under
    contention, or it is unreachable); nothing was written. A 503 with ``Retry-After``."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Busy(Exception):
    """Another worker holds the work this task needs; try again later (Celery retries it)."""
