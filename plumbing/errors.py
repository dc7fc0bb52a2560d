"""Domain error types, one per failure kind, and their single mapping to gRPC status codes."""

from typing import Any

import grpc


class DomainError(Exception):
    """A failure the caller can act on; the message says what to change."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(DomainError):
    """The request itself is wrong; `field` names the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    """The thing the request names does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    """The thing the request would create already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    """The current state forbids the request; the message says which state.

    `subject` names what is in that state, as a resource name ("segments/seg_01…", "loans/LN-1"), and `kind` what kind
    of precondition failed (one of the PRECONDITION_* names); together they are the status's
    google.rpc.PreconditionFailure, beside the BadRequest of the request's `field` when one is named.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self, message: str, *, field: str | None = None, subject: str | None = None, kind: str = "STATE"
    ) -> None:
        super().__init__(message, field=field)
        self.subject = subject
        self.kind = kind


PRECONDITION_STATE = "STATE"
"""The subject's lifecycle state forbids the call (an ARCHIVED segment, a RUNNING campaign, a settled message)."""
PRECONDITION_VERSION = "VERSION"
"""The call names another version than the subject's current one: reload it."""
PRECONDITION_ORDER = "ORDER"
"""An earlier step about the subject is missing (a loan's application before its sanction)."""
PRECONDITION_APPROVAL = "APPROVAL"
"""Maker-checker: the subject needs another person's approval, or its author may not approve it."""
PRECONDITION_REFERENCE = "REFERENCE"
"""The subject refers to, or is referred to by, something whose state forbids the call."""


class Aborted(DomainError):
    """A concurrent change or a reused request id with another payload; retry or use a new id."""

    code = grpc.StatusCode.ABORTED


class Unauthenticated(DomainError):
    """No valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    """Valid credentials without the scope the method needs."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(DomainError):
    """A dependency is down; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(DomainError):
    """The method is in the contract but this version does not serve it yet."""

    code = grpc.StatusCode.UNIMPLEMENTED


def enum_name(enum: Any, value: int, field: str) -> str:
    """The name of a caller's enum value; InvalidArgument naming `field` and the names it may take when the value is
    none of them (a client built from a newer contract, or a typo: protobuf keeps unknown values, and Name raised
    ValueError, answered INTERNAL)."""
    try:
        return str(enum.Name(value))
    except ValueError:
        raise InvalidArgument(f"{field} {value} is not one of {', '.join(enum.keys())}", field=field) from None
