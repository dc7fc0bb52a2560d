"""NATS JetStream: connection, idempotent stream and consumer declaration, and traced durable pull consumers."""

import asyncio
import contextlib
import dataclasses
import itertools
import json
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import orjson
import structlog
from google.protobuf.message import DecodeError, Message
from nats.aio.client import DEFAULT_INBOX_PREFIX
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError, ServerError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from plumbing.errors import InvalidArgument
from plumbing.metrics import meter, tally
from plumbing.settings import ServiceSettings
from plumbing.telemetry import CAMPAIGN_ID, parent_from_headers

log = structlog.get_logger("plumbing.bus")

MSG_ID_HEADER = "Nats-Msg-Id"
CAMPAIGN_ID_HEADER = "Xsell-Campaign-Id"
DLQ_REASON_HEADER = "Xsell-Dlq-Reason"
DLQ_SUBJECT_HEADER = "Xsell-Original-Subject"
# Where the message a dead letter copies is stored: a replay republishes that stored original, not the letter's
# copy, which whoever may write the dead-letter subject could have made up (services/dead_letters.py).
DLQ_STREAM_HEADER = "Xsell-Original-Stream"
DLQ_SEQUENCE_HEADER = "Xsell-Original-Sequence"
DLQ_MESSAGE_ID_HEADER = "Xsell-Original-Message-Id"
DLQ_PAYLOAD_OMITTED_HEADER = "Xsell-Dlq-Payload-Omitted"
# Set on a dead letter replayed to its subject (services/dead_letters.py): the id the message had first, which
# stays its identity for consumers' inboxes, so only the durable that dead-lettered it applies it again.
REPLAY_OF_HEADER = "Xsell-Replay-Of"

M = TypeVar("M", bound=Message)


def inbox_prefix(user: str) -> str:
    """Where a NATS user's replies come (pull deliveries, publish acks, API answers): a prefix of its own, so that a
    user may be let read its replies and no one else's (`_INBOX.>` would be every connection's)."""
    return f"_INBOX_{user}"


CONNECT_ATTEMPT_SECONDS = 10.0
"""How long one first connect to NATS may take before a new client tries again."""

PULL_EXPIRES_SECONDS = 5.0
"""How long one pull request stays open on the server; a request lost with its connection is replaced after this."""

REFUSED_PULL_PAUSE_SECONDS = 0.05
"""The pause before asking again when the server ended a pull request early with an error status."""

INSUFFICIENT_RESOURCES = 10047
"""JetStream's error code for a stream whose limits the account's (or the server's) store cannot reserve."""

STREAM_CREATE_ATTEMPTS = 5
STREAM_CREATE_PAUSE_SECONDS = 0.2
"""ensure_streams asks the server again, after 0.2, 0.4, ... s, when it fails to create a stream's store."""

DEAD_LETTER_RETRY_MAX_SECONDS = 10.0
"""The longest pause between two tries at writing a dead letter that could not be written (NATS away, the
dead-letter stream full); the pauses grow from 0.5 s to this."""
DEAD_LETTER_PAYLOAD_LIMIT = 64 * 1024
"""A larger message's dead letter goes without its payload (DLQ_PAYLOAD_OMITTED_HEADER gives its size): a replay
republishes the stored original anyway, and a feed's 1 MB batch with the letter's headers would pass NATS's maximum
payload (the server then closes the connection) and fill the dead-letter stream's share 20 letters a megabyte."""

STOP_WAIT_SECONDS = 2.0
"""How long a stop waits for the messages in hand to be handled before it gives up on them."""
HEARTBEATS_PER_ACK_WAIT = 3
"""How often, per ack wait, a message whose handler is still running is told to the server as in progress."""
HEARTBEAT_ACK_WAITS = 10
"""For how many ack waits a running handler keeps its message: past that it is presumed stuck, and the server
delivers the message again (to this replica or another), as it did without heartbeats."""


def dead_letter_fix(durable: str) -> str:
    """What an operator does about a durable's dead letter, on the line that reports it (the runbook's steps)."""
    return (
        f"list it with `python -m services.dead_letters list --durable {durable}` (as NATS user operator), fix the "
        f"cause, then `python -m services.dead_letters replay --durable {durable} --seq <seq>` (docs/operations.md, "
        "Dead letters)"
    )


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream: one per publishing service, plus the dead-letter stream."""

    name: str
    subjects: tuple[str, ...]
    # Relay retries within this window carry the same Nats-Msg-Id and are dropped by the stream.
    duplicate_window_seconds: float = 600.0
    max_age_seconds: float = 14 * 24 * 3600.0
    store_share: float = 0.0
    """The part of the account's JetStream store this stream may fill, where the account has a limit (NATS's
    `accounts` block): ensure_streams makes it the stream's byte limit, and a full stream refuses new messages (their
    publishers keep them and try again) instead of dropping its oldest or filling what the other streams need. 0: no
    limit of its own."""


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer on one stream, filtered to one subject."""

    stream: str
    durable: str
    filter_subject: str
    dead_letter_subject: str
    # Bounded redelivery: after max_deliver attempts the message is dead-lettered, not retried forever. Counted here,
    # not by the server (its durable redelivers without a limit): a message whose dead letter could not be written
    # comes back, and one delivered more often than this without being settled is dead-lettered before its handler.
    max_deliver: int = 8
    ack_wait_seconds: float = 30.0
    # Back-pressure: at most this many unacknowledged messages are in flight for the durable.
    max_ack_pending: int = 1000
    batch_size: int = 100
    backoff_seconds: tuple[float, ...] = (0.5, 2.0, 5.0, 15.0, 30.0)


@dataclass(frozen=True)
class Delivery:
    """What a handler knows about the NATS message besides its decoded payload."""

    message_id: str
    subject: str
    num_delivered: int
    headers: Mapping[str, str] = field(default_factory=dict)
    # Where the message is stored, so a handler can name it for a later Bus.stored_message (empty / 0 when unknown).
    stream: str = ""
    stream_sequence: int = 0

    @property
    def campaign_id(self) -> str | None:
        return self.headers.get(CAMPAIGN_ID_HEADER)


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help; the message is terminated and dead-lettered."""


class RetryLater(Exception):
    """Raised by a handler that knows when to try again (a provider's Retry-After, a backoff with jitter).

    The message is naked with exactly that delay instead of the durable's backoff schedule; it
    still counts towards max_deliver.
    """

    def __init__(self, reason: str, delay_seconds: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_seconds = max(0.0, delay_seconds)


class PublishFailed(Exception):
    """A batch publish to JetStream was refused or not acknowledged in time; republishing it is safe.

    `stored` counts the batch's first messages the stream acknowledged, all of them before the first refused or
    unacknowledged one: a caller may take those as published and publish only the rest again."""

    def __init__(self, reason: str, stored: int = 0) -> None:
        super().__init__(reason)
        self.stored = stored


class NatsRefused(Exception):
    """The NATS server refused the user and password at connect: trying again would not help."""


class _AckedBatch:
    """The acknowledgements of one publish_batch call, filled in by the ack inbox's callback."""

    def __init__(self, size: int) -> None:
        self.duplicate: list[bool | None] = [None] * size
        self.missing = size
        self.error: str | None = None
        self.done = asyncio.get_running_loop().create_future()
        self._refused: set[int] = set()

    def acknowledge(self, index: int, duplicate: bool) -> None:
        if 0 <= index < len(self.duplicate) and self.duplicate[index] is None and index not in self._refused:
            self.duplicate[index] = duplicate
            self._answered()

    def refuse(self, index: int, reason: str) -> None:
        """One message refused. The batch still waits for the others' answers, so that `stored` knows which of them
        the stream took (a stream at its byte limit refuses a large message and may take a smaller one after it)."""
        self.error = self.error or reason
        if 0 <= index < len(self.duplicate) and self.duplicate[index] is None and index not in self._refused:
            self._refused.add(index)
            self._answered()

    def _answered(self) -> None:
        self.missing -= 1
        if not self.missing and not self.done.done():
            self.done.set_result(None)

    def stored(self) -> int:
        """How many of the first messages were stored, up to the first refused or unanswered one."""
        return next((index for index, duplicate in enumerate(self.duplicate) if duplicate is None), len(self.duplicate))


class NotProvisioned(Exception):
    """A stream or durable is missing where this process may not make it (its account imports JetStream's API)."""


class Bus:
    """One NATS connection with its JetStream context.

    `api_prefix` is where the connection's account finds JetStream's API: `$JS.API` where the account holds JetStream
    (tests, benchmarks, the provisioner), another prefix where it imports its part of another account's. There the
    streams and durables were made beforehand (a provisioner), and ensure_streams and Consumer.declare check that they
    exist instead of making them (NotProvisioned)."""

    def __init__(self, nc: NatsClient, api_prefix: str = api.DEFAULT_PREFIX) -> None:
        self.nc = nc
        self.api_prefix = api_prefix
        self.provisioned = api_prefix != api.DEFAULT_PREFIX
        self.closing = False
        """Set by drain: a disconnect from now on is this process's own doing."""
        self.js: JetStreamContext = nc.jetstream(prefix=api_prefix)
        self.tls: ssl.SSLContext | None = None
        """The TLS context the connection was made with (Bus.connect with a CA), for certificate_expires_in."""
        self._ack_inbox: str | None = None
        self._ack_inbox_ready = asyncio.Lock()
        self._batches: dict[str, _AckedBatch] = {}
        self._batch_numbers = itertools.count()

    async def publish_batch(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]], *, timeout: float = 5.0
    ) -> list[bool]:
        """Publishes messages to JetStream back to back and waits for all their acks together.

        Returns, per message, whether the stream dropped it as a duplicate of its Nats-Msg-Id. Raises
        PublishFailed when any is refused or unacknowledged within `timeout`, with how many of the first were
        stored: the caller publishes the rest again, and the stream's duplicate window drops the copies of any
        stored after the first failure.

        Each message is a plain publish with its own reply subject on one shared ack inbox, so a batch
        costs a publish and an ack callback per message. nats.py's js.publish makes a future, a
        timeout task and a response-map entry per message, and gathering them a task more: measured,
        most of the relay's CPU.
        """
        if not messages:
            return []
        async with self._ack_inbox_ready:
            if self._ack_inbox is None:
                inbox = self.nc.new_inbox()
                await self.nc.subscribe(f"{inbox}.*.*", cb=self._acknowledged)
                self._ack_inbox = inbox
        token = str(next(self._batch_numbers))
        batch = _AckedBatch(len(messages))
        self._batches[token] = batch
        try:
            for index, (subject, payload, headers) in enumerate(messages):
                await self.nc.publish(subject, payload, reply=f"{self._ack_inbox}.{token}.{index}", headers=headers)
            try:
                await asyncio.wait_for(asyncio.shield(batch.done), timeout)
            except TimeoutError:
                reason = f"{batch.missing} of {len(messages)} messages unacknowledged after {timeout} s"
                if batch.error is not None:
                    reason = f"{batch.error}; {reason}"
                raise PublishFailed(reason, batch.stored()) from None
        finally:
            del self._batches[token]
        if batch.error is not None:
            raise PublishFailed(batch.error, batch.stored())
        return [bool(duplicate) for duplicate in batch.duplicate]

    async def _acknowledged(self, msg: Msg) -> None:
        token, _, index = msg.subject[len(self._ack_inbox or "") + 1 :].partition(".")
        batch = self._batches.get(token)
        if batch is None:
            return  # a batch that already timed out
        headers = msg.headers or {}
        status = headers.get(api.Header.STATUS)
        if status is not None:
            # 503: no stream takes the subject.
            batch.refuse(
                int(index), f"publish refused with status {status} {headers.get(api.Header.DESCRIPTION, '')}".strip()
            )
            return
        try:
            # orjson: ~0.4 µs per ack against ~3 µs for json.loads, one ack per event relayed.
            ack = orjson.loads(msg.data)
        except ValueError:  # orjson.JSONDecodeError is one
            batch.refuse(int(index), f"unreadable publish ack {msg.data[:200]!r}")
            return
        if "error" in ack:
            batch.refuse(int(index), f"publish refused: {ack['error']}")
            return
        batch.acknowledge(int(index), bool(ack.get("duplicate")))

    @classmethod
    async def connect(
        cls,
        url: str,
        name: str,
        *,
        user: str = "",
        password: str = "",
        api_prefix: str = api.DEFAULT_PREFIX,
        tls_ca: Path | None = None,
    ) -> "Bus":
        """Connects as `user` (none when empty), whose replies come to its own inbox prefix (inbox_prefix); over TLS
        when `tls_ca` names the CA certificates the server's is checked against (hostname included)."""
        connecting = True

        async def on_error(error: Exception) -> None:
            # nats.py tries a refused first connect again for ever (max_reconnect_attempts=-1, meant for a server
            # not up yet); an error raised from here ends the attempt.
            if connecting and "Authorization Violation" in str(error):
                raise NatsRefused(
                    f"NATS at {url} refused {f'user {user!r}' if user else 'a connection without a user'}: "
                    "check the NATS user and password this process was given (a service's XSELL_<SERVICE>_NATS_USER "
                    "and _NATS_PASSWORD)"
                )
            if connecting and isinstance(error, ssl.SSLError):
                raise NatsRefused(
                    f"TLS with NATS at {url} failed: {error}; check the CA this process was given (a service's "
                    "XSELL_<SERVICE>_NATS_TLS_CA) and that the server's certificate names the URL's host"
                )
            await _log_nats_error(error)

        bus: Bus | None = None

        async def on_disconnect() -> None:
            # nats.py calls this on our own close too (a drain at shutdown, a tool finishing, a refused first
            # connect): only a connection lost or closed by the server (its last error says why, e.g. a maximum
            # payload exceeded) is worth a warning.
            if not connecting and (bus is None or not bus.closing):
                log.warning("nats_disconnected", error=str(nc.last_error) if nc.last_error else None)

        tls = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca is not None else None
        while True:
            nc = NatsClient()
            try:
                await asyncio.wait_for(
                    nc.connect(
                        url,
                        name=name,
                        user=user or None,
                        password=password if user else None,
                        inbox_prefix=inbox_prefix(user) if user else DEFAULT_INBOX_PREFIX,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # a float works; nats.py says int
                        # Bounded, so a shutdown never hangs on the server (the default is 30 s).
                        drain_timeout=5,
                        tls=tls,
                        # TLS before anything else: nats.py otherwise upgrades only when the server's INFO asks
                        # for it, and sends the password in clear to a server (or anything on its port) that
                        # does not (the servers allow it with handshake_first).
                        tls_handshake_first=tls is not None,
                        error_cb=on_error,
                        disconnected_cb=on_disconnect,
                    ),
                    timeout=CONNECT_ATTEMPT_SECONDS,
                )
                break
            except NatsRefused:
                await _close_bounded(nc)
                raise
            except TimeoutError:
                # A first connect stuck (nats.py waits for ever on a TLS handshake cut off, or on its close): a
                # new client tries again, as nats.py itself does while the server is not up.
                await _close_bounded(nc)
                log.warning("nats_connect_retried", url=url, after_seconds=CONNECT_ATTEMPT_SECONDS)
        connecting = False
        bus = cls(nc, api_prefix)
        bus.tls = tls
        return bus

    @classmethod
    async def of_service(cls, settings: ServiceSettings, name: str) -> "Bus":
        """A connection named `name` to the process's NATS server, as its configured user."""
        return await cls.connect(
            settings.nats_url,
            name=name,
            user=settings.nats_user,
            password=settings.nats_password.get_secret_value(),
            api_prefix=settings.nats_jetstream_api,
            tls_ca=settings.nats_tls_ca,
        )

    async def stored_message(self, stream: str, sequence: int) -> tuple[str, bytes, dict[str, str]] | None:
        """A message still in its stream (subject, payload, headers), by the stream sequence a Delivery names; None
        once it is gone (aged out, purged or deleted)."""
        try:
            message = await self.js.get_msg(stream, sequence)
        except NotFoundError:
            return None
        return message.subject or "", message.data or b"", dict(message.headers or {})

    async def ensure_streams(self, specs: Iterable[StreamSpec], replicas: int = 1) -> None:
        """Creates missing streams and updates changed ones; safe to run at every start of every replica. Where this
        process may not make them (`provisioned`), only checks that they exist.

        `replicas` is the JetStream replication factor (3 on the 3-member cluster of deploy/k8s). Where the account's
        store has a limit, each stream with a `store_share` gets that share of it as its byte limit (per replica:
        JetStream counts a stream's limit once for each of its replicas against the account's).
        """
        store = -1 if self.provisioned else await self.account_store()
        for spec in specs:
            max_bytes = int(spec.store_share * store / replicas) if store > 0 and spec.store_share else -1
            config = api.StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                num_replicas=replicas,
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                duplicate_window=spec.duplicate_window_seconds,
                max_age=spec.max_age_seconds,
                max_bytes=max_bytes,
                # A full stream refuses what comes (the outbox keeps it, a feed is told) rather than dropping its
                # oldest messages before their durables took them.
                discard=api.DiscardPolicy.NEW if max_bytes > 0 else api.DiscardPolicy.OLD,
            )
            for attempt in range(1, STREAM_CREATE_ATTEMPTS + 1):
                try:
                    existing = (await self.js.stream_info(spec.name)).config
                except NotFoundError:
                    if self.provisioned:
                        raise NotProvisioned(
                            f"stream {spec.name} is missing: this process may not make it; provision NATS first "
                            "(python -m services.nats_provision)"
                        ) from None
                    try:
                        await self.js.add_stream(config)
                    except ServerError as error:
                        # "error creating store for stream" (500, 10049): the server could not set up the stream's
                        # files this time (seen once in a test run, a stream of the same name deleted just before);
                        # asking again after a pause creates it, where giving up would fail the service's start.
                        if attempt == STREAM_CREATE_ATTEMPTS:
                            raise
                        log.warning("stream_create_retried", stream=spec.name, attempt=attempt, error=str(error))
                        await asyncio.sleep(STREAM_CREATE_PAUSE_SECONDS * attempt)
                        continue
                else:
                    if not self.provisioned:
                        await self._update_stream(existing, config, store)
                break

    async def _update_stream(self, existing: api.StreamConfig, wanted: api.StreamConfig, store: int) -> None:
        """Updates a stream where it differs from the code (every start of every replica asks, and an unneeded update
        would undo a limit an administrator set on what the code does not configure). Keeps its byte limit where
        this connection sees no store limit (a NATS member still on an older configuration during a rollout) and
        where NATS refuses the new one (a store made smaller than what the streams already reserve)."""
        if store <= 0 and (existing.max_bytes or -1) > 0:
            wanted = dataclasses.replace(wanted, max_bytes=existing.max_bytes, discard=existing.discard)
        if not _differs(existing, wanted):
            return
        try:
            await self.js.update_stream(wanted)
        except ServerError as error:
            if error.err_code != INSUFFICIENT_RESOURCES:
                raise
            # NATS refuses every update, not only a new limit, while the account's store is below what the streams
            # already reserve: the stream stays as it is, and the services start on it.
            log.error(
                "stream_update_refused",
                stream=wanted.name,
                max_bytes=wanted.max_bytes,
                kept_max_bytes=existing.max_bytes,
                error=str(error),
                fix="the account's store is smaller than what the streams reserve: lower each stream's max bytes "
                "first (docs/deploy.md, JetStream storage)",
            )
            return
        state = (await self.js.stream_info(str(wanted.name))).state
        if (wanted.max_bytes or -1) > 0 and (state.bytes or 0) > (wanted.max_bytes or 0):
            log.warning(
                "stream_over_its_limit",
                stream=wanted.name,
                bytes=state.bytes,
                max_bytes=wanted.max_bytes,
                effect="it refuses new messages until older ones age out; grow the store (docs/deploy.md)",
            )

    async def certificate_expires_in(self) -> float | None:
        """Seconds until the certificate of the NATS server this connection uses expires (a new TLS connection to
        it, checked as the connection's was); None without TLS or when it cannot be read now."""
        server = self.nc.connected_url
        if self.tls is None or server is None or server.hostname is None:
            return None
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(server.hostname, server.port or 4222, ssl=self.tls), timeout=5
            )
        except (OSError, TimeoutError):
            return None
        try:
            certificate = writer.get_extra_info("peercert") or {}
            ends = certificate.get("notAfter")
            return ssl.cert_time_to_seconds(ends) - time.time() if isinstance(ends, str) else None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=2)

    async def account_store(self) -> int:
        """The byte limit of this account's JetStream file store (its `jetstream { max_file }`, counted over every
        replica), -1 when it has none of its own."""
        limits = (await self.js.account_info()).limits
        return limits.max_storage if limits.max_storage is not None else -1

    async def ensure_consumer(self, spec: ConsumerSpec) -> None:
        """Creates a durable unless it exists (idempotent); where this process may not make it (`provisioned`), only
        checks that it exists."""
        config = api.ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subject=spec.filter_subject,
            # No limit on the server: the consumer counts (ConsumerSpec.max_deliver). A server that stops
            # redelivering leaves a message neither handled nor dead-lettered when its last attempt could not write
            # the dead letter (NATS briefly away, the dead-letter stream full).
            max_deliver=-1,
            ack_wait=spec.ack_wait_seconds,
            max_ack_pending=spec.max_ack_pending,
        )
        try:
            existing = (await self.js.consumer_info(spec.stream, spec.durable)).config
        except NotFoundError:
            if self.provisioned:
                raise NotProvisioned(
                    f"durable {spec.durable} on {spec.stream} is missing: this process may not make it; provision "
                    "NATS first (python -m services.nats_provision)"
                ) from None
            await self.js.add_consumer(spec.stream, config=config)
            return
        if not self.provisioned and _consumer_differs(existing, config):
            # The durable keeps its place in the stream: creating it again with another configuration updates it.
            await self.js.add_consumer(spec.stream, config=config)

    async def drain(self) -> None:
        """Lets pending publishes and acks reach the server, then closes."""
        self.closing = True
        if not self.nc.is_closed:
            await self.nc.drain()


def _differs(existing: api.StreamConfig, wanted: api.StreamConfig) -> bool:
    """Whether a stream's configuration differs from the code's in what the code sets."""
    return (
        sorted(existing.subjects or []) != sorted(wanted.subjects or [])
        or existing.num_replicas != wanted.num_replicas
        or existing.max_age != wanted.max_age
        or existing.duplicate_window != wanted.duplicate_window
        or (existing.max_bytes or -1) != wanted.max_bytes
        or (existing.discard or api.DiscardPolicy.OLD) != wanted.discard
    )


async def _close_bounded(nc: NatsClient) -> None:
    """Closes a client that never finished connecting: bounded, since after a failed TLS handshake nats.py waits on
    its transport's close for ever."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), timeout=2)


def _consumer_differs(existing: api.ConsumerConfig, wanted: api.ConsumerConfig) -> bool:
    """Whether a durable's configuration differs from the code's in what may change on a durable that exists."""
    return (
        existing.filter_subject != wanted.filter_subject
        or (existing.max_deliver or -1) != wanted.max_deliver
        or existing.max_ack_pending != wanted.max_ack_pending
        or abs((existing.ack_wait or 0) - (wanted.ack_wait or 0)) > 0.001
    )


async def _log_nats_error(error: Exception) -> None:
    log.warning("nats_error", error=str(error))


Handler = Callable[[M, Delivery], Awaitable[None]]
BatchHandler = Callable[[Sequence[tuple[M, Delivery]]], Awaitable[Sequence[BaseException | None]]]
"""Handles the decoded messages of one fetch together; answers each in order: None (acknowledged) or the error its
message is settled on as a handler's own exception would be (nak with backoff, RetryLater, PermanentError)."""
DeadLetterHook = Callable[[M, Delivery, str], Awaitable[None]]
"""Told of a decodable message just before its dead letter is written, with the reason: where the handler keeps a
record of its own (channels' ledger), it says there that the message will not be handled again. Idempotent: it is
also told of messages its handler refused, which may have recorded that already."""


STREAM_WATCH_SECONDS = 30.0
"""How often StreamWatch reads the streams' state."""
CERTIFICATE_WATCH_SECONDS = 600.0
"""And how often the NATS server's certificate."""


class StreamWatch:
    """Reads how full each stream with a byte limit is (services/streams.py: a share of the account's store), for the
    `xsell.stream.fill` gauge (XsellStreamFilling): a stream that fills refuses new messages, and its publishers'
    events wait in their outboxes until it has room. Every service runs one over every stream, so the reading
    survives any one of them. Over TLS, also when the NATS server's certificate expires (`xsell.nats.certificate.
    expiry`, XsellNatsCertificateExpiring): the NATS pods reload a renewed one, and this says when none came."""

    def __init__(self, bus: Bus, streams: Sequence[str], interval: float = STREAM_WATCH_SECONDS) -> None:
        self.bus = bus
        self.streams = streams
        self.interval = interval
        self._stopping = asyncio.Event()
        self._fill = meter().create_gauge(
            "xsell.stream.fill",
            unit="1",
            description="Bytes a stream holds over its byte limit (0 to 1; only streams with a limit).",
        )
        self._expiry = meter().create_gauge(
            "xsell.nats.certificate.expiry",
            unit="s",
            description="Seconds until the NATS server's certificate expires (over TLS only).",
        )
        self._certificate_read_at: float | None = None

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self.observe()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval)

    async def observe(self) -> None:
        for name in self.streams:
            try:
                info = await self.bus.js.stream_info(name)
            except Exception as error:  # noqa: BLE001 - a missed reading only delays the gauge
                log.debug("stream_info_failed", stream=name, error=str(error))
                continue
            limit = info.config.max_bytes or -1
            if limit > 0:
                self._fill.set((info.state.bytes or 0) / limit, {"stream": name})
        now = time.monotonic()
        if self._certificate_read_at is None or now - self._certificate_read_at >= CERTIFICATE_WATCH_SECONDS:
            self._certificate_read_at = now
            expires_in = await self.bus.certificate_expires_in()
            if expires_in is not None:
                self._expiry.set(expires_in)

    async def stop(self) -> None:
        self._stopping.set()


class _PullFeed:
    """Keeps one pull request open on a durable and hands over messages as soon as they arrive.

    nats.py's fetch(n) returns when n messages have come or its wait is over, so under a steady
    stream every message waited for its batch to fill (at 1,000 messages/s and batches of 100, p99
    118 ms from publish to handler). Here the server pushes each message of an open pull request into
    this process's inbox the moment it is published, and next_batch returns whatever has arrived,
    up to the batch size, as soon as there is anything. The next request goes out as soon as the
    current one is used up, before the batch in hand is handled, so the server has the next messages
    ready when the handler is done.
    """

    def __init__(self, bus: Bus, spec: ConsumerSpec) -> None:
        self.bus = bus
        self.spec = spec
        self._subject = f"{bus.api_prefix}.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        self._inbox = bus.nc.new_inbox()
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._subscription: Subscription | None = None
        self._remaining = 0
        self._expires_at = 0.0
        self._refused = False

    async def open(self) -> None:
        async def arrived(msg: Msg) -> None:
            self._queue.put_nowait(msg)

        self._subscription = await self.bus.nc.subscribe(self._inbox, cb=arrived)

    def wake(self) -> None:
        """Ends a wait in next_batch at once (the consumer is stopping)."""
        self._queue.put_nowait(None)

    async def next_batch(self, size: int, take: int | None = None) -> list[Msg]:
        """Messages that have arrived, at most `take` (default `size`, the pull request's batch); waits for the
        first one or the request's end."""
        take = size if take is None else take
        await self._request_if_needed(size)
        wait = max(0.0, self._expires_at - time.monotonic()) + 1.0
        try:
            first = await asyncio.wait_for(self._queue.get(), timeout=wait)
        except TimeoutError:
            # No word from the server before the request should have ended: the request was lost
            # (a reconnect); the next call sends another.
            self._remaining = 0
            return []
        batch: list[Msg] = []
        msg: Msg | None = first
        while msg is not None:
            status = msg.headers.get(api.Header.STATUS) if msg.headers else None
            if status is None:
                batch.append(msg)
                self._remaining -= 1
            elif status != api.StatusCode.CONTROL_MESSAGE:
                # 408 (the request expired), 409 (the server ended it), 404: this request is over.
                self._remaining = 0
                if status != api.StatusCode.REQUEST_TIMEOUT:
                    # e.g. 409 while the durable is at max_ack_pending: ask again, but not in a tight loop.
                    self._refused = True
                    log.debug("pull_request_ended", durable=self.spec.durable, status=status)
            if len(batch) >= take or self._queue.empty():
                break
            msg = self._queue.get_nowait()
        # Ask for the next messages before handling these, so they are on their way meanwhile.
        await self._request_if_needed(size)
        return batch

    async def _request_if_needed(self, size: int) -> None:
        if self._remaining > 0 and time.monotonic() < self._expires_at:
            return
        if self._refused:
            self._refused = False
            await asyncio.sleep(REFUSED_PULL_PAUSE_SECONDS)
        request = {"batch": size, "expires": int(PULL_EXPIRES_SECONDS * 1_000_000_000)}
        await self.bus.nc.publish(self._subject, json.dumps(request).encode(), reply=self._inbox)
        self._remaining = size
        self._expires_at = time.monotonic() + PULL_EXPIRES_SECONDS

    async def close(self) -> None:
        """Stops the inbox and returns unhandled messages to the durable for immediate redelivery."""
        if self._subscription is not None and not self.bus.nc.is_closed:
            await self._subscription.unsubscribe()
        while not self._queue.empty():
            msg = self._queue.get_nowait()
            if msg is not None and not (msg.headers and api.Header.STATUS in msg.headers) and not self.bus.nc.is_closed:
                await msg.nak()


class Consumer(Generic[M]):
    """Pulls from a durable consumer and hands decoded messages to a handler, one CONSUMER span each.

    Acknowledgement policy:
    - ack only after the handler returns, i.e. after its transaction committed;
    - nak with a growing delay on any other exception: the failure may be transient (database
      locked, a service restarting), and JetStream redelivers;
    - term + dead-letter on undecodable payloads, PermanentError or InvalidArgument, or the last allowed attempt,
      because redelivering those would only repeat the failure and block the durable.
    """

    def __init__(
        self,
        bus: Bus,
        spec: ConsumerSpec,
        message_type: type[M],
        handler: Handler[M] | None,
        tracer: trace.Tracer,
        *,
        concurrency: int = 1,
        keep_full: bool = False,
        batch_handler: BatchHandler[M] | None = None,
        on_dead_letter: DeadLetterHook[M] | None = None,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("a consumer takes a handler or a batch_handler, not both")
        if batch_handler is not None and keep_full:
            raise ValueError("keep_full hands messages over one by one: it takes a handler, not a batch_handler")
        self.bus = bus
        self.spec = spec
        self.message_type = message_type
        self.handler = handler
        # Each fetch to one call under one CONSUMER span (_handle_batch), instead of a call, a task and a span per
        # message: for a handler that applies what arrives together as one transaction anyway (campaigns' triggers).
        self.batch_handler = batch_handler
        self.on_dead_letter = on_dead_letter
        self.tracer = tracer
        self.concurrency = concurrency
        # Each message to a handler as soon as it arrives, up to `concurrency` in hand, instead of a fetched batch
        # at a time: a message that arrived while a batch was in hand used to wait for the batch's slowest message.
        self.keep_full = keep_full
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._declared = False
        self._feed: _PullFeed | None = None
        self._attributes = {"durable": spec.durable}
        instruments = meter()
        self._handled = tally(
            "xsell.plumbing",
            "xsell.messages.handled",
            labels=("durable", "outcome"),
            description="Messages handled, by durable and outcome (ack, nak, dead_letter).",
        )
        self._handling = instruments.create_histogram(
            "xsell.message.handling.duration", unit="ms", description="Time to handle one message, by durable."
        )
        self._pending = instruments.create_gauge(
            "xsell.consumer.pending", description="Messages in the stream not yet delivered to the durable (lag)."
        )
        self._lag_checked_at = 0.0
        self._held_letters = instruments.create_up_down_counter(
            "xsell.dead_letters.held",
            description="Messages kept in hand because their dead letter could not be written yet, by durable.",
        )
        self._held_letters.add(0, self._attributes)  # exported from the start: the alert compares it with 0
        # Messages whose dead letter could not be written yet, each held by a task of its own (_hold_letter).
        self._held: set[asyncio.Task[None]] = set()
        # Messages whose handler is running, by id, with when it began: _heartbeat tells the server they are in
        # progress, so a slow handler (a provider's throttle, a slow SMTP relay) is not delivered again meanwhile.
        self._in_hand: dict[int, tuple[Msg, float]] = {}
        self._giving_back = asyncio.Event()

    async def declare(self) -> None:
        """Creates the durable consumer unless it exists (idempotent; every replica runs it at start)."""
        await self.bus.ensure_consumer(self.spec)
        self._declared = True

    async def run(self) -> None:
        """Pulls and handles messages until stop() is called."""
        if not self._declared:
            await self.declare()
        self._stopped.clear()
        self._giving_back.clear()
        feed = _PullFeed(self.bus, self.spec)
        self._feed = feed
        await feed.open()
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"heartbeat-{self.spec.durable}")
        try:
            await self._loop(feed)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            # The durable stays on the server; only this process's interest in it ends. Done even when
            # cancelled, or the connection's drain would wait for this subscription. Messages delivered
            # but not handled go back at once instead of after the ack wait.
            with contextlib.suppress(Exception):
                await feed.close()
            # Then the held letters give their messages back: before, the server handed a message given back to
            # the pull request still open, and it stayed in hand until its ack wait.
            self._giving_back.set()
            if self._held:
                await asyncio.gather(*self._held, return_exceptions=True)
            self._stopped.set()

    async def _loop(self, feed: "_PullFeed") -> None:
        if self.keep_full:
            await self._loop_keeping_full(feed)
            return
        semaphore = asyncio.Semaphore(self.concurrency)
        while not self._stopping.is_set():
            await self._observe_lag()
            batch = await self._pulled(feed, self.spec.batch_size)
            if batch is None:
                break
            if not batch:
                continue
            if self.batch_handler is not None:
                await self._handle_batch(batch, self.batch_handler)
            elif self.concurrency == 1:
                for msg in batch:
                    await self._handle(msg)
            else:

                async def bounded(msg: Msg) -> None:
                    async with semaphore:
                        await self._handle(msg)

                await asyncio.gather(*(bounded(msg) for msg in batch))

    async def _pulled(self, feed: "_PullFeed", take: int) -> list[Msg] | None:
        """What arrived (at most `take`), [] after a failed pull (logged; the connection reconnects), None when the
        failure is the consumer or its connection ending."""
        try:
            return await feed.next_batch(self.spec.batch_size, take)
        except Exception as error:  # noqa: BLE001 - the connection reconnects; log and pull again
            if self._stopping.is_set() or self.bus.nc.is_closed:
                return None
            log.warning("consumer_pull_failed", durable=self.spec.durable, error=str(error))
            await asyncio.sleep(0.5)
            return []

    async def _loop_keeping_full(self, feed: "_PullFeed") -> None:
        """Hands each message to a handler task of its own as it arrives, with at most `concurrency` in hand; when
        stopping, waits for those in hand."""
        in_hand: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                await self._observe_lag()
                if len(in_hand) >= self.concurrency:
                    await asyncio.wait(in_hand, return_when=asyncio.FIRST_COMPLETED)
                    continue
                batch = await self._pulled(feed, self.concurrency - len(in_hand))
                if batch is None:
                    break
                for msg in batch:
                    task = asyncio.create_task(self._handle(msg))
                    in_hand.add(task)
                    task.add_done_callback(in_hand.discard)
        finally:
            if in_hand:
                await asyncio.gather(*in_hand, return_exceptions=True)

    async def stop(self) -> None:
        """Stops pulling and waits for the messages in hand to be handled."""
        self._stopping.set()
        if self._feed is not None:
            self._feed.wake()
        if self._feed is not None and not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=STOP_WAIT_SECONDS)

    async def _observe_lag(self) -> None:
        """Reads the durable's backlog from the server every few seconds, for the consumer lag gauge."""
        now = time.monotonic()
        if now - self._lag_checked_at < 5.0:
            return
        self._lag_checked_at = now
        try:
            info = await self.bus.js.consumer_info(self.spec.stream, self.spec.durable)
        except Exception as error:  # noqa: BLE001 - a missed reading only delays the gauge
            log.debug("consumer_info_failed", durable=self.spec.durable, error=str(error))
            return
        self._pending.set(info.num_pending or 0, self._attributes)

    async def _heartbeat(self) -> None:
        """Tells the server, a few times per ack wait, which messages are still in a running handler's hands.
        Without it a handler slower than the ack wait (channels waiting for a provider's rate, a slow relay) had its
        message delivered again, maybe to another replica, while it still worked: the copy found the hand-over
        SENDING and marked it AMBIGUOUS, and the copy past the last allowed delivery was taken for a process that
        had stopped."""
        interval = self.spec.ack_wait_seconds / HEARTBEATS_PER_ACK_WAIT
        longest = self.spec.ack_wait_seconds * HEARTBEAT_ACK_WAITS
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for msg, since in list(self._in_hand.values()):
                if interval <= now - since <= longest:
                    with contextlib.suppress(Exception):  # a missed heartbeat only risks the delivery again
                        await msg.in_progress()

    async def _handle(self, msg: Msg) -> None:
        started = time.perf_counter()
        key = id(msg)
        self._in_hand[key] = (msg, time.monotonic())
        try:
            outcome = await self._handle_one(msg)
        finally:
            del self._in_hand[key]
        self._handled.add((self.spec.durable, outcome))
        self._handling.record((time.perf_counter() - started) * 1000, self._attributes)

    def _delivery(self, msg: Msg) -> tuple[dict[str, str], Delivery]:
        headers = dict(msg.headers or {})
        metadata = msg.metadata  # nats.py parses the reply subject on every access
        delivery = Delivery(
            message_id=headers.get(REPLAY_OF_HEADER)
            or headers.get(MSG_ID_HEADER, f"{metadata.stream}:{metadata.sequence.stream}"),
            subject=msg.subject,
            num_delivered=metadata.num_delivered or 1,
            headers=headers,
            stream=metadata.stream,
            stream_sequence=metadata.sequence.stream,
        )
        return headers, delivery

    def _process_attributes(self, subject: str) -> dict[str, str | int]:
        """A CONSUMER span's attributes every message or fetch of this durable shares."""
        return {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": subject,
            "messaging.consumer.group.name": self.spec.durable,
        }

    async def _dead_letter_undecodable(self, msg: Msg, headers: dict[str, str], error: DecodeError) -> str:
        return await self._dead_letter(msg, headers, f"undecodable {self.message_type.__name__}: {error}")

    def _unsettled(self, delivery: Delivery) -> str:
        """The reason a message delivered more often than max_deliver is dead-lettered before its handler."""
        return (
            f"delivered {delivery.num_delivered} times ({self.spec.max_deliver} allowed) without being settled: a "
            "process stopped while handling it, or its dead letter could not be written"
        )

    async def _handle_one(self, msg: Msg) -> str:
        headers, delivery = self._delivery(msg)
        attributes = self._process_attributes(msg.subject)
        attributes["messaging.message.id"] = delivery.message_id
        attributes["messaging.nats.delivery_count"] = delivery.num_delivered
        log_fields = {"durable": self.spec.durable, "message_id": delivery.message_id}
        if delivery.campaign_id:
            attributes[CAMPAIGN_ID] = delivery.campaign_id
            log_fields[CAMPAIGN_ID] = delivery.campaign_id
        # The span is started, made current and ended by hand rather than by start_as_current_span, and the log
        # fields bound and reset directly: their context managers' generators were a sixth of a message's CPU.
        span = self.tracer.start_span(
            f"process {msg.subject}",
            context=parent_from_headers(headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        span_token = otel_context.attach(trace.set_span_in_context(span))
        log_tokens = structlog.contextvars.bind_contextvars(**log_fields)
        try:
            return await self._apply(msg, headers, delivery, span)
        except BaseException as error:  # cancelled, or a failure to ack or dead-letter: on the span, then raised
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            structlog.contextvars.reset_contextvars(**log_tokens)
            otel_context.detach(span_token)
            span.end()

    async def _apply(self, msg: Msg, headers: dict[str, str], delivery: Delivery, span: trace.Span) -> str:
        """Decodes and handles one message under its span; acks, naks or dead-letters it. Returns the outcome."""
        if delivery.num_delivered > self.spec.max_deliver:
            span.set_status(Status(StatusCode.ERROR, "never settled"))
            return await self._dead_letter(msg, headers, self._unsettled(delivery), delivery)
        try:
            payload = self.message_type.FromString(msg.data)
        except DecodeError as error:
            span.set_status(Status(StatusCode.ERROR, "poison message"))
            return await self._dead_letter_undecodable(msg, headers, error)
        assert self.handler is not None
        try:
            await self.handler(payload, delivery)
        except Exception as error:  # noqa: BLE001 - settled on what it is: dead-lettered, naked or retried later
            return await self._settle_failed(msg, headers, delivery, error, span)
        await msg.ack()
        return "ack"

    async def _settle_failed(
        self, msg: Msg, headers: dict[str, str], delivery: Delivery, error: Exception, span: trace.Span
    ) -> str:
        """Dead-letters or naks a message its handler failed on, as the error says; returns the outcome."""
        num_delivered = delivery.num_delivered
        if isinstance(error, PermanentError | InvalidArgument):
            # InvalidArgument: the event itself is wrong (a time past year 9999, a field too long), and every retry
            # would find it wrong again.
            span.set_status(Status(StatusCode.ERROR, "permanent failure"))
            return await self._dead_letter(msg, headers, str(error), delivery)
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        if num_delivered >= self.spec.max_deliver:
            log.error(
                "message_retries_exhausted", message_id=delivery.message_id, attempts=num_delivered, exc_info=error
            )
            return await self._dead_letter(msg, headers, f"failed {num_delivered} times: {error!r}", delivery)
        if isinstance(error, RetryLater):
            delay = error.delay_seconds
        else:
            delay = self.spec.backoff_seconds[min(num_delivered, len(self.spec.backoff_seconds)) - 1]
        log.warning(
            "message_nak", message_id=delivery.message_id, attempt=num_delivered, retry_in_s=delay, error=repr(error)
        )
        await msg.nak(delay=delay)
        return "nak"

    async def _handle_batch(self, msgs: list[Msg], batch_handler: BatchHandler[M]) -> None:
        """One fetch, decoded, to one batch_handler call under one CONSUMER span; each message then acked or settled
        on its own answer. The span of a single message continues that message's trace, as _handle_one's does; a
        span of several starts its own and links each message's (OpenTelemetry's batch processing convention), as
        a group commit's batch span does (plumbing.group_commit)."""
        since = time.monotonic()
        self._in_hand.update((id(msg), (msg, since)) for msg in msgs)
        try:
            await self._handle_fetch(msgs, batch_handler)
        finally:
            for msg in msgs:
                del self._in_hand[id(msg)]

    async def _handle_fetch(self, msgs: list[Msg], batch_handler: BatchHandler[M]) -> None:
        started = time.perf_counter()
        taken: list[tuple[Msg, dict[str, str], Delivery]] = []
        items: list[tuple[M, Delivery]] = []
        for msg in msgs:
            headers, delivery = self._delivery(msg)
            if delivery.num_delivered > self.spec.max_deliver:
                settled = await self._dead_letter(msg, headers, self._unsettled(delivery), delivery)
                self._handled.add((self.spec.durable, settled))
                continue
            try:
                payload = self.message_type.FromString(msg.data)
            except DecodeError as error:
                self._handled.add((self.spec.durable, await self._dead_letter_undecodable(msg, headers, error)))
                continue
            taken.append((msg, headers, delivery))
            items.append((payload, delivery))
        if not items:
            return
        subject = taken[0][0].subject
        attributes = self._process_attributes(subject)
        attributes["messaging.batch.message_count"] = len(items)
        campaign_ids = {delivery.campaign_id for _, _, delivery in taken}
        campaign_id = campaign_ids.pop() if len(campaign_ids) == 1 else None
        if campaign_id:
            attributes[CAMPAIGN_ID] = campaign_id
        if len(taken) == 1:
            _, headers, delivery = taken[0]
            attributes["messaging.message.id"] = delivery.message_id
            attributes["messaging.nats.delivery_count"] = delivery.num_delivered
            span = self.tracer.start_span(
                f"process {subject}",
                context=parent_from_headers(headers),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
        else:
            links = []
            for _, headers, _ in taken:
                remote = trace.get_current_span(parent_from_headers(headers)).get_span_context()
                if remote.is_valid:
                    links.append(trace.Link(remote))
            span = self.tracer.start_span(
                f"process {subject}",
                context=otel_context.Context(),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=links,
            )
        span_token = otel_context.attach(trace.set_span_in_context(span))
        log_fields = {"durable": self.spec.durable, **({CAMPAIGN_ID: campaign_id} if campaign_id else {})}
        log_tokens = structlog.contextvars.bind_contextvars(**log_fields)
        try:
            try:
                outcomes: Sequence[BaseException | None] = await batch_handler(items)
                if len(outcomes) != len(items):
                    raise RuntimeError(f"the batch handler answered {len(outcomes)} of {len(items)} messages")
            except Exception as error:  # noqa: BLE001 - every message of the batch is settled on it
                outcomes = [error] * len(items)
            elapsed_ms = (time.perf_counter() - started) * 1000
            # One turn of the loop first: what the handler set going runs before the acknowledgements (the events
            # a trigger batch handed to the relay, which the next stage waits for; the acknowledgements, nothing does).
            await asyncio.sleep(0)
            for outcome in outcomes:
                if outcome is not None and not isinstance(outcome, Exception):
                    raise outcome  # a BaseException (cancelled): not a message's outcome
            # The applied ones first: a failed one's dead letter may be held a while, and they would wait for it.
            settling = sorted(zip(taken, outcomes, strict=True), key=lambda pair: pair[1] is not None)
            for (msg, headers, delivery), outcome in settling:
                if outcome is None:
                    await msg.ack()
                    settled = "ack"
                else:
                    assert isinstance(outcome, Exception)  # checked above
                    settled = await self._settle_failed(msg, headers, delivery, outcome, span)
                self._handled.add((self.spec.durable, settled))
                self._handling.record(elapsed_ms, self._attributes)
        except BaseException as error:  # cancelled, or a failure to ack or dead-letter: on the span, then raised
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            structlog.contextvars.reset_contextvars(**log_tokens)
            otel_context.detach(span_token)
            span.end()

    async def _dead_letter(
        self, msg: Msg, headers: dict[str, str], reason: str, delivery: Delivery | None = None
    ) -> str:
        """Copies the message to the dead-letter subject with the reason, then terminates it: "dead_letter".

        Where the letter cannot be written (NATS away, the dead-letter stream full), a task of its own holds the
        message and writes the letter again until it is written (_hold_letter), and the handler's slot is free at
        once: "dead_letter_failed". The message is never given back to its handler, which might apply a message it
        refused; only a stop gives it back, to the next process.

        With a `delivery` (the message could be handed to its handler), on_dead_letter is told first."""
        if delivery is not None and self.on_dead_letter is not None:
            await self._tell_dead_letter(msg, delivery, reason, self.on_dead_letter)
        try:
            await self._write_dead_letter(msg, headers, reason)
        except Exception as error:  # noqa: BLE001 - held and written again: never lost
            log.error(
                "dead_letter_failed",
                message_id=headers.get(MSG_ID_HEADER),
                reason=reason[:1000],
                error=str(error) or type(error).__name__,
                held=True,
            )
            self._held_letters.add(1, self._attributes)
            task = asyncio.create_task(self._hold_letter(msg, headers, reason), name="dead-letter-held")
            self._held.add(task)
            task.add_done_callback(self._held.discard)
            return "dead_letter_failed"
        await msg.term()
        # The message named here: a batch (_handle_batch) binds no message's fields.
        log.error(
            "message_dead_lettered",
            message_id=headers.get(MSG_ID_HEADER),
            reason=reason,
            fix=dead_letter_fix(self.spec.durable),
        )
        return "dead_letter"

    async def _tell_dead_letter(self, msg: Msg, delivery: Delivery, reason: str, hook: DeadLetterHook[M]) -> None:
        """on_dead_letter, once per message: a message delivered past the one after the last allowed is one whose
        hook stopped the process itself (or whose letter was never written), and the letter alone is written."""
        if delivery.num_delivered > self.spec.max_deliver + 1:
            return
        try:
            payload = self.message_type.FromString(msg.data)
        except DecodeError:
            return
        try:
            await hook(payload, delivery, reason)
        except Exception as error:  # the letter is written all the same: it holds the reason
            log.error("dead_letter_hook_failed", message_id=delivery.message_id, exc_info=error)

    async def _hold_letter(self, msg: Msg, headers: dict[str, str], reason: str) -> None:
        """Keeps a message whose dead letter could not be written in hand (the server is told it is in progress, so
        it is not delivered again) and writes the letter again, with growing pauses, until it is written; when the
        consumer stops, gives the message back. It counts against the durable's max_ack_pending meanwhile: with its
        dead-letter stream full, a durable stops taking messages once that many wait (XsellDeadLettersNotWritten)."""
        try:
            await self._keep_writing_letter(msg, headers, reason)
        finally:
            self._held_letters.add(-1, self._attributes)

    async def _keep_writing_letter(self, msg: Msg, headers: dict[str, str], reason: str) -> None:
        pause = 0.5
        # Told well within the ack wait, whatever the pause.
        tick = min(self.spec.ack_wait_seconds / 3, DEAD_LETTER_RETRY_MAX_SECONDS)
        while not self._giving_back.is_set():
            waited = 0.0
            while waited < pause and not self._giving_back.is_set():
                with contextlib.suppress(Exception):
                    await msg.in_progress()
                step = min(tick, pause - waited)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._giving_back.wait(), timeout=step)
                waited += step
            if self._giving_back.is_set():
                break
            try:
                await self._write_dead_letter(msg, headers, reason)
            except Exception as error:  # noqa: BLE001 - tried again after a longer pause
                log.warning("dead_letter_retried", message_id=headers.get(MSG_ID_HEADER), error=str(error))
                pause = min(pause * 2, DEAD_LETTER_RETRY_MAX_SECONDS)
                continue
            with contextlib.suppress(Exception):
                await msg.term()
            log.error(
                "message_dead_lettered",
                message_id=headers.get(MSG_ID_HEADER),
                reason=reason,
                held=True,
                fix=dead_letter_fix(self.spec.durable),
            )
            self._handled.add((self.spec.durable, "dead_letter"))
            return
        # Stopping: back to the stream at once for the next process (on a closed connection, after the ack wait).
        with contextlib.suppress(Exception):
            await msg.nak()

    async def _write_dead_letter(self, msg: Msg, headers: dict[str, str], reason: str) -> None:
        dlq_headers = {
            **headers,
            DLQ_REASON_HEADER: reason[:1000],
            DLQ_SUBJECT_HEADER: msg.subject,
            DLQ_STREAM_HEADER: msg.metadata.stream,
            DLQ_SEQUENCE_HEADER: str(msg.metadata.sequence.stream),
            DLQ_MESSAGE_ID_HEADER: headers.get(MSG_ID_HEADER, ""),
            MSG_ID_HEADER: f"dlq:{self.spec.durable}:{headers.get(MSG_ID_HEADER, msg.metadata.sequence.stream)}",
        }
        payload = msg.data
        if len(payload) > DEAD_LETTER_PAYLOAD_LIMIT:
            dlq_headers[DLQ_PAYLOAD_OMITTED_HEADER] = str(len(payload))
            payload = b""
        ack = await self.bus.js.publish(self.spec.dead_letter_subject, payload, headers=dlq_headers)
        if ack.duplicate:
            # The id was taken inside the stream's window: by this letter before a crash (a second copy is harmless:
            # a replay applies it once), or by a message someone published first so that this letter would vanish
            # (every durable's letters share the stream). Written again under an id no one can know.
            dlq_headers[MSG_ID_HEADER] += f":{uuid.uuid4().hex}"
            await self.bus.js.publish(self.spec.dead_letter_subject, payload, headers=dlq_headers)
