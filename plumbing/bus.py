"""NATS JetStream: connection, idempotent stream and consumer declaration, and traced durable pull consumers."""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import nats
import structlog
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from plumbing.metrics import meter
from plumbing.telemetry import CAMPAIGN_ID, parent_from_headers

log = structlog.get_logger("plumbing.bus")

MSG_ID_HEADER = "Nats-Msg-Id"
CAMPAIGN_ID_HEADER = "Xsell-Campaign-Id"
DLQ_REASON_HEADER = "Xsell-Dlq-Reason"
DLQ_SUBJECT_HEADER = "Xsell-Original-Subject"
# Set on a dead letter replayed to its subject (services/dead_letters.py): the id the message had first, which
# stays its identity for consumers' inboxes, so only the durable that dead-lettered it applies it again.
REPLAY_OF_HEADER = "Xsell-Replay-Of"

M = TypeVar("M", bound=Message)

FETCH_WAIT_SECONDS = 1.0
"""How long one pull waits for messages; also how long a stop may wait for the fetch in flight."""


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream: one per publishing service, plus the dead-letter stream."""

    name: str
    subjects: tuple[str, ...]
    # Relay retries within this window carry the same Nats-Msg-Id and are dropped by the stream.
    duplicate_window_seconds: float = 600.0
    max_age_seconds: float = 14 * 24 * 3600.0


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer on one stream, filtered to one subject."""

    stream: str
    durable: str
    filter_subject: str
    dead_letter_subject: str
    # Bounded redelivery: after max_deliver attempts the message is dead-lettered, not retried forever.
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


class Bus:
    """One NATS connection with its JetStream context."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()

    @classmethod
    async def connect(cls, url: str, name: str) -> "Bus":
        nc = await nats.connect(
            url,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            # Bounded, so a shutdown never hangs on the server (the default is 30 s).
            drain_timeout=5,
            error_cb=_log_nats_error,
            disconnected_cb=_log_disconnect,
        )
        return cls(nc)

    async def ensure_streams(self, specs: Iterable[StreamSpec], replicas: int = 1) -> None:
        """Creates missing streams and updates changed ones; safe to run at every start of every replica.

        `replicas` is the JetStream replication factor (3 on the 3-member cluster of deploy/k8s).
        """
        for spec in specs:
            config = api.StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                num_replicas=replicas,
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                duplicate_window=spec.duplicate_window_seconds,
                max_age=spec.max_age_seconds,
            )
            try:
                await self.js.stream_info(spec.name)
            except NotFoundError:
                await self.js.add_stream(config)
            else:
                await self.js.update_stream(config)

    async def drain(self) -> None:
        """Lets pending publishes and acks reach the server, then closes."""
        if not self.nc.is_closed:
            await self.nc.drain()


async def _log_nats_error(error: Exception) -> None:
    log.warning("nats_error", error=str(error))


async def _log_disconnect() -> None:
    log.warning("nats_disconnected")


Handler = Callable[[M, Delivery], Awaitable[None]]


class Consumer(Generic[M]):
    """Pulls from a durable consumer and hands decoded messages to a handler, one CONSUMER span each.

    Acknowledgement policy:
    - ack only after the handler returns, i.e. after its transaction committed;
    - nak with a growing delay on any other exception: the failure may be transient (database
      locked, a service restarting), and JetStream redelivers;
    - term + dead-letter on undecodable payloads, PermanentError, or the last allowed attempt,
      because redelivering those would only repeat the failure and block the durable.
    """

    def __init__(
        self,
        bus: Bus,
        spec: ConsumerSpec,
        message_type: type[M],
        handler: Handler[M],
        tracer: trace.Tracer,
        *,
        concurrency: int = 1,
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.message_type = message_type
        self.handler = handler
        self.tracer = tracer
        self.concurrency = concurrency
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._subscription: JetStreamContext.PullSubscription | None = None
        instruments = meter()
        self._handled = instruments.create_counter(
            "xsell.messages.handled", description="Messages handled, by durable and outcome (ack, nak, dead_letter)."
        )
        self._handling = instruments.create_histogram(
            "xsell.message.handling.duration", unit="ms", description="Time to handle one message, by durable."
        )
        self._pending = instruments.create_gauge(
            "xsell.consumer.pending", description="Messages in the stream not yet delivered to the durable (lag)."
        )
        self._lag_checked_at = 0.0

    async def declare(self) -> None:
        """Creates or binds the durable consumer (idempotent)."""
        config = api.ConsumerConfig(
            durable_name=self.spec.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subject=self.spec.filter_subject,
            max_deliver=self.spec.max_deliver,
            ack_wait=self.spec.ack_wait_seconds,
            max_ack_pending=self.spec.max_ack_pending,
        )
        self._subscription = await self.bus.js.pull_subscribe(
            self.spec.filter_subject, durable=self.spec.durable, stream=self.spec.stream, config=config
        )

    async def run(self) -> None:
        """Fetches and handles batches until stop() is called."""
        if self._subscription is None:
            await self.declare()
        assert self._subscription is not None
        self._stopped.clear()
        try:
            await self._loop(self._subscription)
        finally:
            if not self.bus.nc.is_closed:
                # The durable stays on the server; only this process's interest in it ends. Done even
                # when cancelled, or the connection's drain would wait for this subscription.
                with contextlib.suppress(Exception):
                    await self._subscription.unsubscribe()
            self._stopped.set()

    async def _loop(self, subscription: JetStreamContext.PullSubscription) -> None:
        semaphore = asyncio.Semaphore(self.concurrency)
        while not self._stopping.is_set():
            await self._observe_lag()
            try:
                batch = await subscription.fetch(self.spec.batch_size, timeout=FETCH_WAIT_SECONDS)
            except NatsTimeoutError:
                continue
            except Exception as error:  # noqa: BLE001 - the connection reconnects; log and poll again
                if self._stopping.is_set() or self.bus.nc.is_closed:
                    break
                log.warning("consumer_fetch_failed", durable=self.spec.durable, error=str(error))
                await asyncio.sleep(0.5)
                continue
            if self.concurrency == 1:
                for msg in batch:
                    await self._handle(msg)
            else:

                async def bounded(msg: Msg) -> None:
                    async with semaphore:
                        await self._handle(msg)

                await asyncio.gather(*(bounded(msg) for msg in batch))

    async def stop(self) -> None:
        """Stops fetching and waits for the batch in hand to finish (at most a fetch wait longer)."""
        self._stopping.set()
        if self._subscription is not None and not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), timeout=FETCH_WAIT_SECONDS + 1.0)

    async def _observe_lag(self) -> None:
        """Reads the durable's backlog from the server every few seconds, for the consumer lag gauge."""
        now = time.monotonic()
        if self._subscription is None or now - self._lag_checked_at < 5.0:
            return
        self._lag_checked_at = now
        try:
            info = await self._subscription.consumer_info()
        except Exception as error:  # noqa: BLE001 - a missed reading only delays the gauge
            log.debug("consumer_info_failed", durable=self.spec.durable, error=str(error))
            return
        self._pending.set(info.num_pending or 0, {"durable": self.spec.durable})

    async def _handle(self, msg: Msg) -> None:
        started = time.perf_counter()
        outcome = await self._handle_one(msg)
        attributes = {"durable": self.spec.durable}
        self._handled.add(1, {**attributes, "outcome": outcome})
        self._handling.record((time.perf_counter() - started) * 1000, attributes)

    async def _handle_one(self, msg: Msg) -> str:
        headers = dict(msg.headers or {})
        num_delivered = msg.metadata.num_delivered or 1
        delivery = Delivery(
            message_id=headers.get(REPLAY_OF_HEADER)
            or headers.get(MSG_ID_HEADER, f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"),
            subject=msg.subject,
            num_delivered=num_delivered,
            headers=headers,
        )
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": msg.subject,
            "messaging.consumer.group.name": self.spec.durable,
            "messaging.message.id": delivery.message_id,
            "messaging.nats.delivery_count": num_delivered,
        }
        if delivery.campaign_id:
            attributes[CAMPAIGN_ID] = delivery.campaign_id
        parent = parent_from_headers(headers)
        with (
            self.tracer.start_as_current_span(
                f"process {msg.subject}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
            ) as span,
            structlog.contextvars.bound_contextvars(
                durable=self.spec.durable, message_id=delivery.message_id, **_campaign(delivery)
            ),
        ):
            try:
                payload = self.message_type.FromString(msg.data)
            except DecodeError as error:
                await self._dead_letter(msg, headers, f"undecodable {self.message_type.__name__}: {error}")
                span.set_status(Status(StatusCode.ERROR, "poison message"))
                return "dead_letter"
            try:
                await self.handler(payload, delivery)
            except PermanentError as error:
                await self._dead_letter(msg, headers, str(error))
                span.set_status(Status(StatusCode.ERROR, "permanent failure"))
                return "dead_letter"
            except Exception as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                if num_delivered >= self.spec.max_deliver:
                    log.error("message_retries_exhausted", attempts=num_delivered, exc_info=error)
                    await self._dead_letter(msg, headers, f"failed {num_delivered} times: {error!r}")
                    return "dead_letter"
                if isinstance(error, RetryLater):
                    delay = error.delay_seconds
                else:
                    delay = self.spec.backoff_seconds[min(num_delivered, len(self.spec.backoff_seconds)) - 1]
                log.warning("message_nak", attempt=num_delivered, retry_in_s=delay, error=repr(error))
                await msg.nak(delay=delay)
                return "nak"
            await msg.ack()
            return "ack"

    async def _dead_letter(self, msg: Msg, headers: dict[str, str], reason: str) -> None:
        """Copies the message to the dead-letter subject with the reason, then terminates it."""
        log.error("message_dead_lettered", reason=reason)
        dlq_headers = {
            **headers,
            DLQ_REASON_HEADER: reason[:1000],
            DLQ_SUBJECT_HEADER: msg.subject,
            MSG_ID_HEADER: f"dlq:{self.spec.durable}:{headers.get(MSG_ID_HEADER, msg.metadata.sequence.stream)}",
        }
        await self.bus.js.publish(self.spec.dead_letter_subject, msg.data, headers=dlq_headers)
        await msg.term()


def _campaign(delivery: Delivery) -> dict[str, str]:
    return {CAMPAIGN_ID: delivery.campaign_id} if delivery.campaign_id else {}
