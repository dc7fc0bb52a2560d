"""NATS with the users and permissions of services/nats_access.py, on a real server: each service reaches its own
events and replies only, the bulk feeds only their subjects and answers, and a segments service running as its user
applies a feed's batch."""

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamState
from opentelemetry.sdk.trace import TracerProvider
from pydantic import SecretStr

from devstack.nats_server import NatsServer
from devstack.stack import nats_passwords
from plumbing.bus import (
    DLQ_SEQUENCE_HEADER,
    DLQ_STREAM_HEADER,
    DLQ_SUBJECT_HEADER,
    MSG_ID_HEADER,
    Bus,
    Consumer,
    Delivery,
    NatsRefused,
    NotProvisioned,
    PublishFailed,
    inbox_prefix,
)
from plumbing.ids import new_id
from services import dead_letters, nats_access, nats_provision, streams
from services.segments.app import build
from services.segments.settings import SegmentsSettings
from tests.integration.nats_users import service_bus
from tests.waiting import eventually
from xsell.campaigns.v1 import events_pb2 as campaign_events
from xsell.segments.v1 import events_pb2
from xsell.segments.v1 import service_pb2 as api

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.xdist_group("nats-access")
KUBERNETES_STORES = {nats_access.MEMBER_STORE_VARIABLE: "9GB", nats_access.STORE_VARIABLE: "24GB"}
"""The store sizes the NATS pods get in deploy/k8s/base/nats.yaml."""
TRACER = TracerProvider().get_tracer("test")


@pytest.fixture(scope="module")
def passwords(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return nats_passwords(tmp_path_factory.mktemp("var"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, str]) -> Iterator[NatsServer]:
    started = NatsServer(
        tmp_path_factory.mktemp("nats-access"), authorization=nats_access.authorization_config(passwords)
    ).start()
    yield started
    started.stop()


class Connection:
    """A user's connection that keeps what the server refused it (permission violations come asynchronously)."""

    def __init__(self, server: NatsServer, user: str, password: str) -> None:
        self.server, self.user, self.password = server, user, password
        self.refusals: list[str] = []
        self.nc: Client | None = None

    async def __aenter__(self) -> Client:
        async def refused(error: Exception) -> None:
            self.refusals.append(str(error))

        self.nc = await nats.connect(
            self.server.url,
            user=self.user,
            password=self.password,
            inbox_prefix=inbox_prefix(self.user),
            error_cb=refused,
            allow_reconnect=False,
        )
        return self.nc

    async def __aexit__(self, *_: object) -> None:
        assert self.nc is not None
        await self.nc.close()

    async def refused(self, words: str) -> bool:
        return any(words in refusal for refusal in self.refusals)


@pytest.fixture
async def streams_made(server: NatsServer, passwords: dict[str, str]) -> None:
    """Every stream and durable, made by the provisioner as `make run` does before the services start."""
    bus = await Bus.connect(server.url, "test-provision", user="provisioner", password=passwords["provisioner"])
    try:
        await nats_provision.provision(bus)
    finally:
        await bus.drain()


async def test_a_service_makes_nothing_and_says_what_is_missing(passwords: dict[str, str], tmp_path: Path) -> None:
    """Its account imports no way to make a stream or durable: on a server not provisioned it stops with the reason."""
    fresh = NatsServer(tmp_path / "nats", authorization=nats_access.authorization_config(passwords)).start()
    try:
        attribution = await service_bus(fresh, passwords, "attribution")
        try:
            with pytest.raises(NotProvisioned, match=r"stream XSELL_SEGMENTS is missing: .*services.nats_provision"):
                await attribution.ensure_streams(streams.ALL_STREAMS)
        finally:
            await attribution.drain()
    finally:
        fresh.stop()


async def test_the_local_configuration_holds_hashes_not_passwords(passwords: dict[str, str], tmp_path: Path) -> None:
    """`make run`'s server reads bcrypt hashes: no password is in its file, it does not warn of plaintext passwords,
    and each user still logs in with the password itself."""
    configuration = nats_access.authorization_config(passwords)
    assert not any(password in configuration for password in passwords.values())
    assert configuration.count('password: "$2a$10$') == len(nats_access.USERS)
    log = tmp_path / "nats.log"
    local = NatsServer(tmp_path / "nats", authorization=configuration).start(log)
    try:
        for user in ("operator", "channels"):
            await (await Bus.connect(local.url, "test", user=user, password=passwords[user])).drain()
        with pytest.raises(NatsRefused):
            await Bus.connect(local.url, "test", user="channels", password=passwords["segments"])
    finally:
        local.stop()
    assert "[WRN]" not in log.read_text(), log.read_text()


async def test_a_wrong_password_or_no_user_is_refused_at_once(server: NatsServer) -> None:
    """Not tried again for ever, as nats.py does with a server that is not up yet: a service stops with the reason."""
    with pytest.raises(NatsRefused, match="refused user 'feeds': check the NATS user and password"):
        await Bus.connect(server.url, "test", user="feeds", password="guess")
    with pytest.raises(NatsRefused, match="refused a connection without a user"):
        await Bus.connect(server.url, "test")


async def test_a_service_runs_its_own_durable_on_another_services_events(
    server: NatsServer, passwords: dict[str, str], streams_made: None
) -> None:
    """Campaigns publishes a DispatchRequested; channels' durable takes it through plumbing.bus.Consumer (declare,
    pull to its own inbox, ack), as the service does; channels cannot publish it itself."""
    campaigns = await service_bus(server, passwords, "campaigns")
    channels = await service_bus(server, passwords, "channels")
    received: dict[str, Delivery] = {}

    async def handle(request: campaign_events.DispatchRequested, delivery: Delivery) -> None:
        received[request.campaign_id] = delivery

    consumer = Consumer(channels, streams.CHANNELS_DISPATCH, campaign_events.DispatchRequested, handle, TRACER)
    running = asyncio.create_task(consumer.run())
    try:
        campaign_id = f"CSELL-ACCESS-{new_id()}"
        request = campaign_events.DispatchRequested(campaign_id=campaign_id).SerializeToString()
        assert await campaigns.publish_batch(
            [(streams.DISPATCH_REQUESTED, request, {MSG_ID_HEADER: new_id("ev_")})]
        ) == [False]

        async def handled() -> bool:
            return campaign_id in received

        await eventually(handled)
        info = await channels.js.consumer_info(streams.CAMPAIGNS_STREAM.name, streams.CHANNELS_DISPATCH.durable)
        assert info.num_ack_pending == 0
        # The resend reads it again by its place in the stream (services/channels/resend.py).
        delivery = received[campaign_id]
        stored = await channels.stored_message(delivery.stream, delivery.stream_sequence)
        assert stored is not None and stored[1] == request
        with pytest.raises(PublishFailed, match="unacknowledged"):  # the publish is dropped: its ack never comes
            await channels.publish_batch(
                [(streams.DISPATCH_REQUESTED, request, {MSG_ID_HEADER: new_id("ev_")})], timeout=0.5
            )
    finally:
        await consumer.stop()
        await running
        await campaigns.drain()
        await channels.drain()


@pytest.mark.parametrize(
    ("request_subject", "payload"),
    [
        (
            f"{nats_access.IMPORTED_API}.CONSUMER.MSG.NEXT.XSELL_CAMPAIGNS.channels-dispatch",
            b'{"batch":1,"no_wait":true}',
        ),
        (f"{nats_access.IMPORTED_API}.CONSUMER.INFO.XSELL_CAMPAIGNS.channels-dispatch", b""),
    ],
)
async def test_a_service_cannot_aim_an_answer_at_the_jetstream_api(
    server: NatsServer, passwords: dict[str, str], streams_made: None, request_subject: str, payload: bytes
) -> None:
    """In one account JetStream runs an answer sent to `$JS.API.STREAM.DELETE.<stream>` as that request (a review
    deleted streams so, through a pull's "no messages"). A service's account imports its own calls only: the answer
    comes back into it, where there is no JetStream to run it."""
    async with Connection(server, "channels", passwords["channels"]) as nc:
        for target in ("$JS.API.STREAM.DELETE.XSELL_SEGMENTS", "$JS.API.STREAM.PURGE.XSELL_CAMPAIGNS"):
            await nc.publish(request_subject, payload, reply=target)
        await nc.flush()
        await asyncio.sleep(0.5)  # the answers' time to come back (and, in one account, to be run)
    assert (await _stream_state(server, passwords, streams.SEGMENTS_STREAM.name)) is not None
    durable = await _durable(server, passwords, streams.CAMPAIGNS_STREAM.name, streams.CHANNELS_DISPATCH.durable)
    assert durable is not None


async def _durable(server: NatsServer, passwords: dict[str, str], stream: str, durable: str) -> object:
    bus = await Bus.connect(server.url, "test-state", user="operator", password=passwords["operator"])
    try:
        return await bus.js.consumer_info(stream, durable)
    finally:
        await bus.drain()


SPY = json.dumps({"name": "SPY", "subjects": [f"{inbox_prefix('campaigns')}.>"]}).encode()
FORGER = json.dumps(
    {
        "name": streams.CAMPAIGNS_STREAM.name,
        "subjects": list(streams.CAMPAIGNS_STREAM.subjects),
        "sources": [{"name": streams.SEGMENTS_STREAM.name}],
    }
).encode()


@pytest.mark.parametrize(
    ("request_subject", "payload"),
    [
        ("$JS.API.STREAM.DELETE.XSELL_CAMPAIGNS", b""),
        ("$JS.API.STREAM.PURGE.XSELL_CAMPAIGNS", b""),
        ("$JS.API.STREAM.UPDATE.XSELL_CAMPAIGNS", FORGER),  # another's stream, copying forged events into it
        ("$JS.API.STREAM.CREATE.SPY", SPY),  # a stream of another's replies
        ("$JS.API.CONSUMER.MSG.NEXT.XSELL_CHANNELS.attribution-delivery", b'{"batch": 1}'),  # another's durable
        ("$JS.API.CONSUMER.DURABLE.CREATE.XSELL_CAMPAIGNS.spy", b"{}"),  # a durable of its own making
        ("$JS.API.STREAM.MSG.GET.XSELL_INGEST", b'{"seq": 1}'),  # the CRM's dumps
        ("xsell.dlq.campaigns-delivery", b""),  # another's dead letters
    ],
)
async def test_a_service_cannot_reach_what_is_not_its_own(
    server: NatsServer, passwords: dict[str, str], request_subject: str, payload: bytes
) -> None:
    connection = Connection(server, "channels", passwords["channels"])
    async with connection as nc:
        await nc.publish(request_subject, payload, reply=nc.new_inbox())
        await nc.flush()
        refusal = f'permissions violation for publish to "{request_subject.lower()}"'
        await eventually(lambda: connection.refused(refusal))


@pytest.mark.parametrize(
    "subject",
    ["_INBOX.>", f"{inbox_prefix('campaigns')}.>", "xsell.campaigns.dispatch_requested", ">"],
)
async def test_a_service_cannot_listen_to_what_is_not_its_own(
    server: NatsServer, passwords: dict[str, str], subject: str
) -> None:
    connection = Connection(server, "channels", passwords["channels"])
    async with connection as nc:
        await nc.subscribe(subject)
        await nc.flush()
        await eventually(lambda: connection.refused(f'permissions violation for subscription to "{subject.lower()}"'))


async def test_the_feeds_publish_ingest_batches_and_read_their_answers_only(
    server: NatsServer, passwords: dict[str, str], streams_made: None
) -> None:
    connection = Connection(server, "feeds", passwords["feeds"])
    async with connection as nc:
        js = nc.jetstream()
        ack = await js.publish(streams.INGEST_EVENTS, b"batch", headers={MSG_ID_HEADER: new_id("feed_")})
        assert ack.stream == streams.INGEST_STREAM.name
        await nc.subscribe(streams.BULK_INGEST_COMPLETED)
        await nc.flush()
        assert connection.refusals == []
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish(streams.BULK_INGEST_COMPLETED, b"forged", timeout=0.5)
        with pytest.raises(nats.errors.TimeoutError):  # a subject of the ingest stream no one reads
            await js.publish("xsell.ingest.anything", b"filler", timeout=0.5)
        for subject in ("_INBOX.>", f"{inbox_prefix('segments')}.>", "xsell.campaigns.>"):
            await nc.subscribe(subject)
        await nc.flush()

        async def all_refused() -> bool:
            return all(
                [
                    await connection.refused('publish to "xsell.segments.bulk_ingest_completed"'),
                    await connection.refused('publish to "xsell.ingest.anything"'),
                    await connection.refused('subscription to "_inbox.>"'),
                    await connection.refused('subscription to "_inbox_segments.>"'),
                    await connection.refused('subscription to "xsell.campaigns.>"'),
                ]
            )

        await eventually(all_refused)


async def test_a_feed_cannot_turn_a_reply_subject_into_an_event(
    server: NatsServer, passwords: dict[str, str], streams_made: None
) -> None:
    """A publish names where its ack goes. In one account a feed naming `xsell.segments.membership_changed` would
    have JetStream store its ack there, as segments' event; the feeds' account keeps its replies to itself."""
    segments_stream = streams.SEGMENTS_STREAM.name
    before = (await _stream_state(server, passwords, segments_stream)).messages
    async with Connection(server, "feeds", passwords["feeds"]) as nc:
        await nc.publish(streams.INGEST_EVENTS, b"batch", reply=streams.MEMBERSHIP_CHANGED)
        ack = await nc.request(streams.INGEST_EVENTS, b"batch", timeout=5)  # the same publish, its ack answered
        assert b'"stream":"XSELL_INGEST"' in ack.data.replace(b" ", b"")
    assert (await _stream_state(server, passwords, segments_stream)).messages == before


async def test_a_feed_batch_is_applied_by_segments_running_as_its_user(
    server: NatsServer, passwords: dict[str, str], tmp_path: Path, streams_made: None
) -> None:
    settings = SegmentsSettings(
        grpc_port=0,
        var_dir=tmp_path,
        nats_url=server.url,
        nats_user="segments",
        nats_password=SecretStr(passwords["segments"]),
        nats_jetstream_api=nats_access.IMPORTED_API,
        sqlite_checkpoint_interval_seconds=0,
    )
    process = await build(settings, TracerProvider())
    await process.start()
    answers: list[events_pb2.BulkIngestCompleted] = []

    async def answered(msg: Msg) -> None:
        answers.append(events_pb2.BulkIngestCompleted.FromString(msg.data))

    try:
        async with Connection(server, "feeds", passwords["feeds"]) as nc:
            await nc.subscribe(streams.BULK_INGEST_COMPLETED, cb=answered)
            batch = api.UpsertProfilesRequest(request_id=new_id("dump_"))
            batch.profiles.add(profile_id=f"feed-{new_id()}").attributes["customer_tier"].string_value = "Gold"
            await nc.jetstream().publish(
                streams.INGEST_PROFILES, batch.SerializeToString(), headers={MSG_ID_HEADER: new_id("feed_")}
            )

            async def the_answer() -> list[events_pb2.BulkIngestCompleted]:
                return [a for a in answers if a.request_id == batch.request_id]

            [answer] = await eventually(the_answer)
            assert answer.accepted_count == 1 and answer.subject == streams.INGEST_PROFILES
    finally:
        await process.stop(1)


async def test_only_the_operator_replays_a_dead_letter_to_another_services_subject(
    server: NatsServer, passwords: dict[str, str], streams_made: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Channels dead-letters a campaigns event; channels itself may list it but not republish it as campaigns', nor
    delete it; the dead-letter tool as `operator` does both."""
    durable = streams.CHANNELS_DISPATCH.durable
    campaigns = await service_bus(server, passwords, "campaigns")
    try:
        original = await campaigns.js.publish(
            streams.DISPATCH_REQUESTED, b"", headers={MSG_ID_HEADER: new_id("ev_")}, timeout=5
        )
    finally:
        await campaigns.drain()
    channels = await service_bus(server, passwords, "channels")
    try:
        letter = {
            MSG_ID_HEADER: f"dlq:{durable}:{new_id('ev_')}",
            DLQ_SUBJECT_HEADER: streams.DISPATCH_REQUESTED,
            DLQ_STREAM_HEADER: original.stream,
            DLQ_SEQUENCE_HEADER: str(original.seq),
        }
        await channels.publish_batch([(streams.CHANNELS_DISPATCH.dead_letter_subject, b"dead", letter)])
        with pytest.raises(nats.errors.TimeoutError):
            await dead_letters.replay(channels, durable)  # it may not read the dead letters, nor publish them
    finally:
        await channels.drain()
    operator = await Bus.connect(server.url, "test-operator", user="operator", password=passwords["operator"])
    try:
        listed = await dead_letters.dead_letters(operator, durable)
        assert listed and all(d.original_subject == streams.DISPATCH_REQUESTED for d in listed)
    finally:
        await operator.drain()
    campaigns_stream = streams.CAMPAIGNS_STREAM.name
    before = (await _stream_state(server, passwords, campaigns_stream)).messages
    monkeypatch.setenv("XSELL_NATS_USER", "operator")
    monkeypatch.setenv("XSELL_NATS_PASSWORD", passwords["operator"])
    assert await dead_letters._main(["--nats-url", server.url, "replay", "--durable", durable, "--all"]) == 0
    assert (await _stream_state(server, passwords, campaigns_stream)).messages == before + len(listed)
    assert await dead_letters._main(["--nats-url", server.url, "list", "--durable", durable]) == 0
    monkeypatch.setenv("XSELL_NATS_PASSWORD", "wrong")
    assert await dead_letters._main(["--nats-url", server.url, "list"]) == 2


async def _stream_state(server: NatsServer, passwords: dict[str, str], stream: str) -> StreamState:
    bus = await Bus.connect(server.url, "test-state", user="operator", password=passwords["operator"])
    try:
        return (await bus.js.stream_info(stream)).state
    finally:
        await bus.drain()


def _pod_environment(**passwords: str) -> dict[str, str]:
    """What the NATS pods' init container is given (deploy/k8s/base/nats.yaml), each password new unless named."""
    environment = KUBERNETES_STORES | {
        nats_access.password_variable(user): nats_access.new_password() for user in nats_access.USERS
    }
    return environment | {nats_access.password_variable(user): value for user, value in passwords.items()}


def _write_config(tmp_path: Path, environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The init container's command, `python -m services.nats_access write-config CONFIG STORE_DIR`."""
    command = [sys.executable, "-m", "services.nats_access", "write-config", str(tmp_path / "accounts.conf")]
    return subprocess.run([*command, str(tmp_path)], env=environment, capture_output=True, text=True)


@pytest.mark.parametrize(
    "password",
    ["12345678901234567", "true-or-false-no", "abc defghijklmnopq", "$abcdefghijklmnopq", 'a"quote;and}brace#x'],
)
async def test_a_password_nats_would_have_misread_from_its_env_is_now_read_as_it_is(
    tmp_path: Path, password: str
) -> None:
    """While the server read `$NATS_PASSWORD_<USER>` from its env, each of these stopped it (a number, a boolean, a
    space, a `$`, a quote: a panic or a syntax error), and the check refused them. Its configuration now holds the
    password's hash, a quoted string, so any password of 16 characters or more works as the Secret holds it."""
    environment = _pod_environment(feeds=password)
    assert nats_access.password_problems(environment) == []
    written = _write_config(tmp_path, environment)
    assert written.returncode == 0, written.stderr
    configuration = (tmp_path / "accounts.conf").read_text()
    assert password not in configuration
    log = tmp_path / "nats.log"
    server = NatsServer(tmp_path / "nats", authorization=configuration).start(log)
    try:
        await (await Bus.connect(server.url, "test", user="feeds", password=password)).drain()
    finally:
        server.stop()
    assert "[WRN]" not in log.read_text(), log.read_text()


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("", "NATS_PASSWORD_FEEDS is not set: add key 'feeds' to the Secret nats-users"),
        (
            "guessable",
            "NATS_PASSWORD_FEEDS (key 'feeds' of the Secret nats-users) is shorter than 16 characters: make it e.g. "
            "n$(openssl rand -hex 24)",
        ),
        (
            "n" + "0" * 72,
            "NATS_PASSWORD_FEEDS (key 'feeds' of the Secret nats-users) is longer than 72 bytes, more than bcrypt "
            "hashes",
        ),
    ],
)
def test_a_password_the_check_refuses_is_named_and_no_configuration_is_written(
    tmp_path: Path, password: str, problem: str
) -> None:
    """A key missing from nats-users, a short password, or one longer than bcrypt reads: the init container names the
    key, writes nothing, and the pod does not start (the server would otherwise start without that user)."""
    environment = _pod_environment(feeds=password)
    assert nats_access.password_problems(environment) == [problem]
    written = _write_config(tmp_path, environment)
    assert (written.returncode, f"error: {problem}" in written.stderr) == (1, True), written.stderr
    assert not (tmp_path / "accounts.conf").exists()
    assert nats_access.password_problems({}) == [
        f"{nats_access.password_variable(user)} is not set: add key {user!r} to the Secret nats-users"
        for user in nats_access.USERS
    ]


def test_an_unknown_user_has_no_permissions() -> None:
    with pytest.raises(ValueError, match="unknown NATS user 'crm'"):
        nats_access.permissions("crm")
