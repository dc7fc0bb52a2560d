"""Who may do what on NATS: one user per service, one for the institution's bulk feeds, one for operators.

On a server without authorization (tests, benchmarks) everyone may do everything. `make run` and Kubernetes run
NATS with the `accounts` block rendered here:

- the bulk feeds (a data platform outside xsell, user `feeds`) have an account of their own, FEEDS, which sees only
  the two feed subjects and segments' answers (`xsell.segments.bulk_ingest_completed`), imported from XSELL. Their
  replies stay in FEEDS, and FEEDS has no JetStream: a feed reaches nothing else of xsell's;
- the four services and the operator share the account XSELL, which holds JetStream. There each service's
  permissions are named, not wildcards: it publishes its own events (`xsell.<service>.>`) and its own durables'
  dead letters; of the JetStream API it reads state, creates a known stream that is missing, changes only the
  streams it owns (streams.OWNERS), and creates, pulls from and acknowledges its own durables (a durable's name
  starts with its service); it reads only its own replies (`_INBOX_<user>.>`, plumbing.bus.inbox_prefix). This keeps
  a service's mistakes (a wrong subject, another's durable) from reaching another's events. It does not hold
  against a compromised service: in one account JetStream answers to any reply subject, so a service that forges
  one (a pull or an ack naming `$JS.API.STREAM.DELETE.<stream>`) can delete or purge streams, and an owner can
  reconfigure its own streams to copy others' traffic. Isolation against that needs an account per service, with
  streams and durables made by an administrator's step instead of the services (docs/deploy.md);
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


XSELL_ACCOUNT = "XSELL"
"""The account of the four services, the operator and JetStream."""
FEEDS_ACCOUNT = "FEEDS"
"""The bulk feeds' account: it sees only the two feed subjects and segments' answers, imported from XSELL. Its own
replies stay in it, so a feed cannot turn a reply subject (a publish ack sent where the feed names) into an event of
XSELL's, as a user of the same account could."""

FEEDS_EXPORTS = (
    ("service", streams.INGEST_EVENTS),
    ("service", streams.INGEST_PROFILES),
    ("stream", streams.BULK_INGEST_COMPLETED),
)
"""What XSELL shares with FEEDS: the feed subjects as services (a JetStream publish is a request; its ack comes back
to the feed's account) and segments' answers as a stream."""


def authorization_config(passwords: Mapping[str, str] | None = None) -> str:
    """NATS's `accounts` block with every user: with `passwords` given, those (a local server's); without, a
    reference to the environment variable password_variable(user) each (Kubernetes)."""
    lines = [
        "# Generated by services/nats_access.py (python -m services.nats_access): the accounts, and what each",
        "# NATS user may do in its own.",
        "accounts {",
        f"  {XSELL_ACCOUNT}: {{",
        "    jetstream: enabled",
        "    users = [",
        *_users([u for u in USERS if u != FEEDS_USER], passwords),
        "    ]",
        "    exports = [",
        *(f"      {{ {kind}: {json.dumps(subject)}, accounts: [{FEEDS_ACCOUNT}] }}" for kind, subject in FEEDS_EXPORTS),
        "    ]",
        "  }",
        f"  {FEEDS_ACCOUNT}: {{",
        "    users = [",
        *_users([FEEDS_USER], passwords),
        "    ]",
        "    imports = [",
        *(
            f"      {{ {kind}: {{ account: {XSELL_ACCOUNT}, subject: {json.dumps(subject)} }} }}"
            for kind, subject in FEEDS_EXPORTS
        ),
        "    ]",
        "  }",
        "}",
        "",
    ]
    return "\n".join(lines)


def _users(users: list[str], passwords: Mapping[str, str] | None) -> list[str]:
    lines = []
    for user in users:
        allowed = permissions(user)
        password = f"${password_variable(user)}" if passwords is None else json.dumps(passwords[user])
        lines += [
            f"      {{ user: {user}, password: {password}, permissions: {{",
            "        publish: { allow: [",
            *(f"          {json.dumps(subject)}," for subject in allowed.publish),
            "        ] }",
            "        subscribe: { allow: [",
            *(f"          {json.dumps(subject)}," for subject in allowed.subscribe),
            "        ] }",
            "      } }",
        ]
    return lines


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
