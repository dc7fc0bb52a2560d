"""Who may do what on NATS: one user per service, one for the institution's bulk feeds, one for operators.

On a server without authorization (tests, benchmarks) everyone may do everything. `make run` and Kubernetes run
NATS with the `authorization` block rendered here. Everything is named, nothing is a wildcard over JetStream's API:

- a service publishes its own events (`xsell.<service>.>`) and its own durables' dead letters
  (`xsell.dlq.<durable>`), and nothing of anyone else's;
- of the JetStream API it may read streams' and its own durables' state, create a known stream that is missing,
  change only the streams it owns (streams.OWNERS), and create, pull from and acknowledge its own durables
  (services/streams.py: a durable's name starts with its service). So it cannot take another service's messages,
  reconfigure or purge another's stream, delete anything, or make a stream or consumer that copies another's
  traffic;
- it reads only its own replies (`_INBOX_<user>.>`, plumbing.bus.inbox_prefix): pulls, publish acks, API answers;
- the bulk feeds (a data platform outside xsell, `feeds`) publish only to the two feed subjects and read segments'
  answers (`xsell.segments.bulk_ingest_completed`) and their own replies;
- the operator (the dead-letter tool, `nats stream report`) reads streams' and durables' state, reads and deletes
  dead letters, and republishes to the subjects durables consume (services/dead_letters.py replays a letter only
  to its own durable's subject).

Kubernetes' copy is `deploy/k8s/base/nats-auth.conf` (passwords from the environment, which the NATS pods take from
the Secret `nats-users`); a test keeps it equal to `authorization_config()`. Regenerate it with
`python -m services.nats_access > deploy/k8s/base/nats-auth.conf`.
"""

import json
import os
import re
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from plumbing.bus import ConsumerSpec, inbox_prefix
from services import streams

SERVICE_USERS = ("segments", "campaigns", "channels", "attribution")
FEEDS_USER = "feeds"
OPERATOR_USER = "operator"
USERS = (*SERVICE_USERS, FEEDS_USER, OPERATOR_USER)

_OWN_EVENTS = {
    "segments": streams.SEGMENTS_STREAM,
    "campaigns": streams.CAMPAIGNS_STREAM,
    "channels": streams.CHANNELS_STREAM,
    "attribution": streams.ATTRIBUTION_STREAM,
}

STORED_READS = {"channels": (streams.CAMPAIGNS_STREAM.name, streams.CHANNELS_STREAM.name)}
"""Streams a service reads single messages of by sequence: channels' resend reads the DispatchRequested (or
DispatchResent) it is handing over again (services/channels/resend.py)."""

API = "$JS.API"
STATE_READS = (f"{API}.INFO", f"{API}.STREAM.INFO.*")
"""Account and stream state (limits, counts; no message): every service reads them at start."""


def _consumer_api(consumer: ConsumerSpec) -> tuple[str, ...]:
    """What running one durable takes: its state (lag), creating it (each name nats.py may use), pulls and acks."""
    stream, durable = consumer.stream, consumer.durable
    return (
        f"{API}.CONSUMER.INFO.{stream}.{durable}",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.CREATE.{stream}.{durable}.>",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
        consumer.dead_letter_subject,
    )


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def permissions(user: str) -> Permissions:
    """What `user` may publish and subscribe to."""
    replies = f"{inbox_prefix(user)}.>"
    if user in _OWN_EVENTS:
        consumers = [c for c in streams.CONSUMERS if streams.owner(c) == user]
        return Permissions(
            publish=(
                *_OWN_EVENTS[user].subjects,
                *STATE_READS,
                *(f"{API}.STREAM.CREATE.{spec.name}" for spec in streams.ALL_STREAMS),
                *(f"{API}.STREAM.UPDATE.{name}" for name in sorted(streams.owned_by(user))),
                *(f"{API}.STREAM.MSG.GET.{name}" for name in STORED_READS.get(user, ())),
                *(subject for consumer in consumers for subject in _consumer_api(consumer)),
            ),
            subscribe=(replies,),
        )
    if user == FEEDS_USER:
        return Permissions(
            publish=(streams.INGEST_EVENTS, streams.INGEST_PROFILES),
            subscribe=(replies, streams.BULK_INGEST_COMPLETED),
        )
    if user == OPERATOR_USER:
        dead_letters = streams.DEAD_LETTER_STREAM.name
        return Permissions(
            publish=(
                *STATE_READS,
                f"{API}.STREAM.LIST",
                f"{API}.STREAM.NAMES",
                f"{API}.CONSUMER.INFO.*.*",
                f"{API}.CONSUMER.LIST.*",
                f"{API}.CONSUMER.NAMES.*",
                f"{API}.STREAM.MSG.GET.{dead_letters}",
                f"{API}.STREAM.MSG.DELETE.{dead_letters}",
                *sorted({consumer.filter_subject for consumer in streams.CONSUMERS}),
            ),
            subscribe=(replies,),
        )
    raise ValueError(f"unknown NATS user {user!r}; the users are {', '.join(USERS)}")


PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]{15,}")
"""What a password may be in Kubernetes, where NATS reads `$NATS_PASSWORD_<USER>` as a value of its configuration:
`12345678`, `true` or `2k` would be a number or a boolean (the server panics), a space, quote or `;` a syntax error.
Letters, digits, `-` and `_`, starting with a letter, at least 16: e.g. `n$(openssl rand -hex 24)`."""


def new_password() -> str:
    """A password PASSWORD allows: 33 characters, 128 random bits."""
    return "n" + secrets.token_hex(16)


def password_problems(environment: Mapping[str, str]) -> list[str]:
    """What is wrong with the NATS users' passwords in `environment` (the NATS pods' check before the server starts)."""
    problems = []
    for user in USERS:
        variable = password_variable(user)
        value = environment.get(variable)
        if not value:
            problems.append(f"{variable} is not set: add key {user!r} to the Secret nats-users")
        elif not PASSWORD.fullmatch(value):
            problems.append(
                f"{variable} (key {user!r} of the Secret nats-users) must be letters, digits, '-' and '_', starting "
                "with a letter, at least 16 characters: NATS reads it as part of its configuration"
            )
    return problems


def password_variable(user: str) -> str:
    """The environment variable the NATS server reads `user`'s password from."""
    return f"NATS_PASSWORD_{user.upper()}"


def authorization_config(passwords: Mapping[str, str] | None = None) -> str:
    """NATS's `authorization` block for every user: with `passwords` given, those (a local server's); without, a
    reference to the environment variable password_variable(user) each (Kubernetes)."""
    lines = [
        "# Generated by services/nats_access.py (python -m services.nats_access): what each NATS user may do.",
        "authorization {",
        "  users = [",
    ]
    for user in USERS:
        allowed = permissions(user)
        password = f"${password_variable(user)}" if passwords is None else json.dumps(passwords[user])
        lines += [
            f"    {{ user: {user}, password: {password}, permissions: {{",
            "      publish: { allow: [",
            *(f"        {json.dumps(subject)}," for subject in allowed.publish),
            "      ] }",
            "      subscribe: { allow: [",
            *(f"        {json.dumps(subject)}," for subject in allowed.subscribe),
            "      ] }",
            "    } }",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m services.nats_access` prints Kubernetes' authorization block; `... check-env` checks the passwords
    in the environment (the NATS pods' init container) and names each one that would stop the server."""
    if argv == ["check-env"]:
        problems = password_problems(os.environ)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    if argv:
        print("usage: python -m services.nats_access [check-env]", file=sys.stderr)
        return 2
    print(authorization_config(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
