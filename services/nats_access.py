"""Who may do what on NATS: an account per service, one for the institution's bulk feeds, and JetStream's own.

On a server without authorization (tests, benchmarks) everyone may do everything, and each service makes the streams
and durables it needs. `make run` and Kubernetes run NATS with the `accounts` block rendered here:

- account XSELL holds JetStream: every stream and durable, the `provisioner` (services/nats_provision.py, which
  makes them before the services start) and the `operator` (the dead-letter tool, `nats stream report`: stream and
  durable state, reading and deleting dead letters, republishing to the subjects durables consume);
- each service has an account of its own (SEGMENTS, CAMPAIGNS, CHANNELS, ATTRIBUTION) with no JetStream. It imports
  from XSELL only what it runs (`grants`): publishing its own events and its own durables' dead letters, streams'
  state, and its own durables' state, pulls and acks (channels also reads single messages of two streams, its
  resend). JetStream's API is `XSELL.API.<...>` there (the `nats_jetstream_api` setting). So a service cannot make,
  change, purge or delete a stream or durable, nor take, read or forge another's messages: an answer it aims at
  `$JS.API.STREAM.DELETE.<stream>` (a reply subject of its own pull) comes back into its own account, where no
  JetStream runs it;
- the bulk feeds (a data platform outside xsell, `feeds`) have account FEEDS: it imports the two feed subjects from
  XSELL and segments' answers from SEGMENTS, nothing else.

Inside each account the user's permissions name the same subjects, and it reads only its own replies
(`_INBOX_<user>.>`, plumbing.bus.inbox_prefix).

XSELL's JetStream store has a limit (`store`): the provisioner gives each stream its share of it (services/streams.py),
so one stream filling up stops only its own publishers.

The server's configuration holds each user's password as a bcrypt hash (password_hash), never the password itself:
`make run` writes it into var/, and in Kubernetes each NATS pod's init container (`python -m services.nats_access
write-config`, the xsell image) writes it, with XSELL's store, into an in-memory volume the server includes, from the
Secret `nats-users` it alone is given. The server's own container holds no password.
"""

import json
import os
import re
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from plumbing.bus import inbox_prefix
from services import streams

SERVICE_USERS = ("segments", "campaigns", "channels", "attribution")
FEEDS_USER = "feeds"
OPERATOR_USER = "operator"
PROVISIONER_USER = "provisioner"
USERS = (*SERVICE_USERS, FEEDS_USER, OPERATOR_USER, PROVISIONER_USER)

XSELL_ACCOUNT = "XSELL"
"""JetStream's account: the streams and durables, the provisioner and the operator."""

STORE_VARIABLE = "NATS_XSELL_STORE"
"""Where the NATS pods in Kubernetes read XSELL's file store from (24GB in the base: 8 GB on each of the 3 members).
Counted over every replica: a stream's byte limit counts 3 times with 3 replicas."""
MEMBER_STORE_VARIABLE = "NATS_MAX_FILE_STORE"
"""And each member's own JetStream file store (nats.conf's `max_file_store`: 9GB on a 10Gi volume in the base, the
rest of it JetStream's own state)."""
CLUSTER_MEMBERS = 3

STORE = re.compile(r"([1-9][0-9]*)(MB|GB|TB)")
"""A store size as the NATS configuration reads it (binary units: 1GB is 1024^3 bytes)."""


def store_bytes(size: str) -> int:
    """The bytes a size such as `24GB` is to NATS."""
    matched = STORE.fullmatch(size)
    if matched is None:
        raise ValueError(f"store size {size!r}: write a whole number followed by MB, GB or TB, e.g. 24GB")
    return int(matched[1]) * 1024 ** {"MB": 2, "GB": 3, "TB": 4}[matched[2]]


FEEDS_ACCOUNT = "FEEDS"

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
IMPORTED_API = "XSELL.API"
"""Where a service's account finds the part of XSELL's JetStream API it imports: `$JS.API.<rest>` is
`XSELL.API.<rest>` there (its own `$JS.API` is its account's, which has no JetStream). A service's
`nats_jetstream_api` setting."""


def account(user: str) -> str:
    """The account `user` logs into."""
    if user in SERVICE_USERS:
        return user.upper()
    return FEEDS_ACCOUNT if user == FEEDS_USER else XSELL_ACCOUNT


@dataclass(frozen=True)
class Grant:
    """A subject of XSELL's that one service's account imports (a service: each request has its answer)."""

    subject: str
    streamed: bool = False
    """Answered by a stream of messages, not one: a pull's deliveries."""

    @property
    def local(self) -> str:
        """The subject's name in the service's account."""
        return IMPORTED_API + self.subject[len(API) :] if self.subject.startswith(API + ".") else self.subject


def grants(service: str) -> tuple[Grant, ...]:
    """All a service may reach of XSELL's: publishing its own events and its own durables' dead letters, streams'
    state, and running its own durables (their state, pulls and acks); channels also reads single messages of two
    streams. Nothing creates, changes or deletes: the provisioner made the streams and durables."""
    consumers = [c for c in streams.CONSUMERS if streams.owner(c) == service]
    return (
        *(Grant(subject) for subject in _OWN_EVENTS[service].subjects),
        Grant(f"{API}.STREAM.INFO.*"),
        *(Grant(f"{API}.STREAM.MSG.GET.{name}") for name in STORED_READS.get(service, ())),
        *(
            grant
            for c in consumers
            for grant in (
                Grant(f"{API}.CONSUMER.INFO.{c.stream}.{c.durable}"),
                Grant(f"{API}.CONSUMER.MSG.NEXT.{c.stream}.{c.durable}", streamed=True),
                Grant(f"$JS.ACK.{c.stream}.{c.durable}.>"),
                Grant(c.dead_letter_subject),
            )
        ),
    )


FEEDS_GRANTS = (Grant(streams.INGEST_EVENTS), Grant(streams.INGEST_PROFILES))
"""The feeds publish their batches as requests (a JetStream publish is answered with its ack)."""
FEEDS_STREAMS = (streams.BULK_INGEST_COMPLETED,)
"""And hear segments' answers, from segments' account (where segments publishes them: what reaches XSELL through an
import is not passed on to another account's import)."""


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def permissions(user: str) -> Permissions | None:
    """What `user` may publish and subscribe to in its account; None: everything (the provisioner)."""
    replies = f"{inbox_prefix(user)}.>"
    if user in SERVICE_USERS:
        return Permissions(publish=tuple(g.local for g in grants(user)), subscribe=(replies,))
    if user == FEEDS_USER:
        return Permissions(publish=tuple(g.local for g in FEEDS_GRANTS), subscribe=(replies, *FEEDS_STREAMS))
    if user == OPERATOR_USER:
        dead_letters = streams.DEAD_LETTER_STREAM.name
        return Permissions(
            publish=(
                f"{API}.INFO",
                f"{API}.STREAM.INFO.*",
                f"{API}.STREAM.LIST",
                f"{API}.STREAM.NAMES",
                f"{API}.CONSUMER.INFO.*.*",
                f"{API}.CONSUMER.LIST.*",
                f"{API}.CONSUMER.NAMES.*",
                f"{API}.STREAM.MSG.GET.{dead_letters}",
                f"{API}.STREAM.MSG.DELETE.{dead_letters}",
                # A replay republishes the stored original a letter names, read from the stream its durable consumes.
                *sorted({f"{API}.STREAM.MSG.GET.{consumer.stream}" for consumer in streams.CONSUMERS}),
                *sorted({consumer.filter_subject for consumer in streams.CONSUMERS}),
            ),
            subscribe=(replies,),
        )
    if user == PROVISIONER_USER:
        return None
    raise ValueError(f"unknown NATS user {user!r}; the users are {', '.join(USERS)}")


MIN_PASSWORD_LENGTH = 16
"""The shortest password the NATS pods' check allows: new_password's are 33 characters of 128 random bits."""
MAX_PASSWORD_BYTES = 72
"""The longest password bcrypt reads whole (in UTF-8); it refuses a longer one rather than hash its first 72 bytes."""


def new_password() -> str:
    """A password of 33 characters, 128 random bits."""
    return "n" + secrets.token_hex(16)


BCRYPT_COST = 10
"""bcrypt's work factor for the hashes the server's configuration holds (~0.1 s a connection here): the server checks a
login against it, and NATS's own tool suggests 11. The passwords themselves (new_password: 128 random bits) would not
fall to guessing at any cost; the hash keeps them out of a configuration file or dump that leaks."""


def password_hash(password: str) -> str:
    """`password` as the server's configuration holds it: a bcrypt hash with the `$2a$` prefix NATS recognises, so the
    file never holds the password itself (and the server does not warn "Plaintext passwords detected")."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST, prefix=b"2a")).decode()


def store_problems(environment: Mapping[str, str], disk_bytes: int | None = None) -> list[str]:
    """What is wrong with the JetStream store sizes in `environment` (the NATS pods' check before the server starts):
    each must be one NATS reads as a size, XSELL's must fit the members' stores, and a member's its disk
    (`disk_bytes`, the size of the filesystem the store is on, when known)."""
    problems = []
    for variable in (MEMBER_STORE_VARIABLE, STORE_VARIABLE):
        value = environment.get(variable)
        if not value:
            problems.append(f"{variable} is not set: give the StatefulSet nats a size such as 24GB")
        elif not STORE.fullmatch(value):
            problems.append(f"{variable} {value!r}: write a whole number followed by MB, GB or TB, e.g. 24GB")
    if problems:
        return problems
    member, xsell = environment[MEMBER_STORE_VARIABLE], environment[STORE_VARIABLE]
    if store_bytes(xsell) > CLUSTER_MEMBERS * store_bytes(member):
        problems.append(
            f"{STORE_VARIABLE} {xsell} is more than the {CLUSTER_MEMBERS} members' {MEMBER_STORE_VARIABLE} {member}: "
            "the streams would be given byte limits the members cannot hold"
        )
    if disk_bytes is not None and store_bytes(member) > disk_bytes:
        problems.append(
            f"{MEMBER_STORE_VARIABLE} {member} is more than this member's volume ({disk_bytes / 1024**3:.1f} GiB): "
            "the disk would fill before any stream's limit; grow the volume first (docs/deploy.md, JetStream storage)"
        )
    return problems


def disk_bytes(path: str) -> int:
    """The size of the filesystem `path` is on, less the blocks only root may use (NATS runs as another user)."""
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree + stats.f_bavail) * stats.f_frsize


def password_problems(environment: Mapping[str, str]) -> list[str]:
    """What is wrong with the NATS users' passwords in `environment` (the NATS pods' check before the server starts).
    Any character goes: the configuration holds the password's hash, which NATS never reads as a value of its own."""
    problems = []
    for user in USERS:
        variable = password_variable(user)
        value = environment.get(variable)
        if not value:
            problems.append(f"{variable} is not set: add key {user!r} to the Secret nats-users")
        elif len(value) < MIN_PASSWORD_LENGTH:
            problems.append(
                f"{variable} (key {user!r} of the Secret nats-users) is shorter than {MIN_PASSWORD_LENGTH} characters: "
                "make it e.g. n$(openssl rand -hex 24)"
            )
        elif len(value.encode()) > MAX_PASSWORD_BYTES:
            problems.append(
                f"{variable} (key {user!r} of the Secret nats-users) is longer than {MAX_PASSWORD_BYTES} bytes, more "
                "than bcrypt hashes"
            )
    return problems


def password_variable(user: str) -> str:
    """The environment variable the NATS pods' init container reads `user`'s password from (Secret nats-users)."""
    return f"NATS_PASSWORD_{user.upper()}"


def authorization_config(passwords: Mapping[str, str], *, store: str | None = None) -> str:
    """NATS's `accounts` block with every user and the bcrypt hash of its password in `passwords`. `store`: the limit
    of XSELL's JetStream file store (e.g. `24GB`, over every replica); without, none of its own."""
    jetstream = "jetstream: enabled" if store is None else f"jetstream: {{ max_file: {store} }}"
    if store is not None:
        store_bytes(store)  # refuses a size NATS would read otherwise
    exports: dict[Grant, list[str]] = {}  # XSELL's services, each to the accounts that import it
    for service in SERVICE_USERS:
        for grant in grants(service):
            exports.setdefault(grant, []).append(account(service))
    for grant in FEEDS_GRANTS:
        exports.setdefault(grant, []).append(FEEDS_ACCOUNT)
    lines = [
        "# Generated by services/nats_access.py (python -m services.nats_access): the accounts, what each imports of",
        "# XSELL's, and what each NATS user may do in its own.",
        "accounts {",
        f"  {XSELL_ACCOUNT}: {{",
        f"    {jetstream}",
        "    users = [",
        *_users([OPERATOR_USER, PROVISIONER_USER], passwords),
        "    ]",
        "    exports = [",
    ]
    for grant, accounts in exports.items():
        answers = ", response_type: stream" if grant.streamed else ""
        lines.append(f"      {{ service: {json.dumps(grant.subject)}, accounts: [{', '.join(accounts)}]{answers} }}")
    lines += ["    ]", "  }"]
    segments = account("segments")
    for user in (*SERVICE_USERS, FEEDS_USER):
        imported = [("service", XSELL_ACCOUNT, g) for g in (grants(user) if user in SERVICE_USERS else FEEDS_GRANTS)]
        if user == FEEDS_USER:
            imported += [("stream", segments, Grant(subject)) for subject in FEEDS_STREAMS]
        lines += [f"  {account(user)}: {{", "    users = [", *_users([user], passwords), "    ]", "    imports = ["]
        for kind, source, grant in imported:
            renamed = f", to: {json.dumps(grant.local)}" if grant.local != grant.subject else ""
            lines.append(f"      {{ {kind}: {{ account: {source}, subject: {json.dumps(grant.subject)} }}{renamed} }}")
        lines += ["    ]"]
        if user == "segments":
            lines += [
                "    exports = [",
                *(f"      {{ stream: {json.dumps(s)}, accounts: [{FEEDS_ACCOUNT}] }}" for s in FEEDS_STREAMS),
                "    ]",
            ]
        lines += ["  }"]
    lines += ["}", ""]
    return "\n".join(lines)


def _users(users: list[str], passwords: Mapping[str, str]) -> list[str]:
    lines = []
    for user in users:
        allowed = permissions(user)
        password = json.dumps(password_hash(passwords[user]))
        if allowed is None:
            lines.append(f"      {{ user: {user}, password: {password} }}")
            continue
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


def environment_config(environment: Mapping[str, str]) -> str:
    """The `accounts` block of a NATS pod: each user's password (password_variable) and XSELL's store (STORE_VARIABLE)
    from `environment`, checked first (password_problems, store_problems)."""
    return authorization_config(
        {user: environment[password_variable(user)] for user in USERS}, store=environment[STORE_VARIABLE]
    )


def write_config(path: Path, environment: Mapping[str, str]) -> None:
    """Writes environment_config to `path`, readable by its owner alone, whole or not at all (the server never
    includes half a file)."""
    text = environment_config(environment)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    partial.replace(path)


USAGE = "usage: python -m services.nats_access check-env [STORE_DIR] | write-config CONFIG_FILE [STORE_DIR]"


def main(argv: list[str]) -> int:
    """`python -m services.nats_access check-env [STORE_DIR]` checks the passwords and store sizes in the environment,
    and the member's store against the volume STORE_DIR is on, naming each one that is missing, too weak, or would
    leave the streams limits the members cannot hold; `... write-config CONFIG_FILE [STORE_DIR]` (the NATS pods' init
    container) checks the same and, when all is well, writes the `accounts` block with the passwords' hashes and
    XSELL's store to CONFIG_FILE, which nats.conf includes."""
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "check-env" and len(args) <= 1:
        store_dir = args[0] if args else None
    elif command == "write-config" and 1 <= len(args) <= 2:
        store_dir = args[1] if len(args) == 2 else None
    else:
        print(USAGE, file=sys.stderr)
        return 2
    disk = disk_bytes(store_dir) if store_dir is not None else None
    problems = password_problems(os.environ) + store_problems(os.environ, disk)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    if command == "write-config":
        write_config(Path(args[0]), os.environ)
        print(f"wrote the accounts of {len(USERS)} users, their passwords hashed, to {args[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
