"""NATS with the users and permissions of services/nats_access.py, on a real server: each service reaches its own
events and replies only, the bulk feeds only their subjects and answers, and a segments service running as its user
applies a feed's batch."""

from collections.abc import AsyncIterator, Iterator
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
from plumbing.bus import DLQ_SUBJECT_HEADER, MSG_ID_HEADER, Bus, NatsRefused, PublishFailed, inbox_prefix
from plumbing.ids import new_id
from services import dead_letters, nats_access, streams
from services.segments.app import build
from services.segments.settings import SegmentsSettings
from tests.waiting import eventually
from xsell.segments.v1 import events_pb2
from xsell.segments.v1 import service_pb2 as api

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.xdist_group("nats-access")


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
async def streams_made(server: NatsServer, passwords: dict[str, str]) -> AsyncIterator[None]:
    bus = await Bus.connect(server.url, "test-streams", user="segments", password=passwords["segments"])
    try:
        await bus.ensure_streams(streams.ALL_STREAMS)
        yield
    finally:
        await bus.drain()


async def test_a_wrong_password_or_no_user_is_refused_at_once(server: NatsServer) -> None:
    """Not tried again for ever, as nats.py does with a server that is not up yet: a service stops with the reason."""
    with pytest.raises(NatsRefused, match="refused user 'feeds': check the NATS user and password"):
        await Bus.connect(server.url, "test", user="feeds", password="guess")
    with pytest.raises(NatsRefused, match="refused a connection without a user"):
        await Bus.connect(server.url, "test")


async def test_a_service_publishes_its_own_events_and_reads_its_own_replies_only(
    server: NatsServer, passwords: dict[str, str], streams_made: None
) -> None:
    campaigns = await Bus.connect(server.url, "test-campaigns", user="campaigns", password=passwords["campaigns"])
    channels = await Bus.connect(server.url, "test-channels", user="channels", password=passwords["channels"])
    try:
        event_id = new_id("ev_")
        assert await campaigns.publish_batch(
            [(streams.DISPATCH_REQUESTED, b"dispatch", {MSG_ID_HEADER: event_id})]
        ) == [False]
        # Channels consumes it (a durable, a pull to its own inbox, an ack), as its consumers do.
        durable = f"access-{new_id()}"
        pull = await channels.js.pull_subscribe(
            streams.DISPATCH_REQUESTED, durable, stream=streams.CAMPAIGNS_STREAM.name
        )
        [message] = await pull.fetch(1, timeout=5)
        assert message.data == b"dispatch" and message.reply.startswith("$JS.ACK.")
        await message.ack_sync()
        # But it cannot publish campaigns' events (the publish is dropped and its ack never comes) ...
        with pytest.raises(PublishFailed, match="unacknowledged"):
            await channels.publish_batch(
                [(streams.DISPATCH_REQUESTED, b"forged", {MSG_ID_HEADER: new_id("ev_")})], timeout=0.5
            )
        # ... nor delete a stream.
        with pytest.raises(nats.errors.TimeoutError):
            await channels.nc.request(f"$JS.API.STREAM.DELETE.{streams.CAMPAIGNS_STREAM.name}", b"", timeout=0.5)
        assert (await campaigns.js.stream_info(streams.CAMPAIGNS_STREAM.name)).state.messages >= 1
    finally:
        await campaigns.drain()
        await channels.drain()


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
        for subject in ("_INBOX.>", f"{inbox_prefix('segments')}.>", "xsell.campaigns.>"):
            await nc.subscribe(subject)
        await nc.flush()

        async def all_refused() -> bool:
            return all(
                [
                    await connection.refused('publish to "xsell.segments.bulk_ingest_completed"'),
                    await connection.refused('subscription to "_inbox.>"'),
                    await connection.refused('subscription to "_inbox_segments.>"'),
                    await connection.refused('subscription to "xsell.campaigns.>"'),
                ]
            )

        await eventually(all_refused)


async def test_a_feed_batch_is_applied_by_segments_running_as_its_user(
    server: NatsServer, passwords: dict[str, str], tmp_path: Path
) -> None:
    settings = SegmentsSettings(
        grpc_port=0,
        var_dir=tmp_path,
        nats_url=server.url,
        nats_user="segments",
        nats_password=SecretStr(passwords["segments"]),
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
    durable = f"channels-access-{new_id()}"
    channels = await Bus.connect(server.url, "test-channels", user="channels", password=passwords["channels"])
    try:
        letter = {MSG_ID_HEADER: f"dlq:{durable}:{new_id('ev_')}", DLQ_SUBJECT_HEADER: streams.DISPATCH_REQUESTED}
        await channels.publish_batch([(f"{streams.DEAD_LETTER_PREFIX}.{durable}", b"dead", letter)])
        [listed] = await dead_letters.dead_letters(channels, durable)
        with pytest.raises(nats.errors.TimeoutError):
            await dead_letters.replay(channels, durable)  # its publish to campaigns' subject is refused
        assert [d.seq for d in await dead_letters.dead_letters(channels, durable)] == [listed.seq]
    finally:
        await channels.drain()
    campaigns_stream = streams.CAMPAIGNS_STREAM.name
    before = (await _stream_state(server, passwords, campaigns_stream)).messages
    monkeypatch.setenv("XSELL_NATS_USER", "operator")
    monkeypatch.setenv("XSELL_NATS_PASSWORD", passwords["operator"])
    assert await dead_letters._main(["--nats-url", server.url, "replay", "--durable", durable, "--all"]) == 0
    assert (await _stream_state(server, passwords, campaigns_stream)).messages == before + 1
    monkeypatch.setenv("XSELL_NATS_PASSWORD", "wrong")
    assert await dead_letters._main(["--nats-url", server.url, "list"]) == 2


async def _stream_state(server: NatsServer, passwords: dict[str, str], stream: str) -> StreamState:
    bus = await Bus.connect(server.url, "test-state", user="operator", password=passwords["operator"])
    try:
        return (await bus.js.stream_info(stream)).state
    finally:
        await bus.drain()


def test_the_kubernetes_nats_authorization_is_the_generated_one() -> None:
    """deploy/k8s/base/nats-auth.conf: `python -m services.nats_access > deploy/k8s/base/nats-auth.conf`."""
    assert (ROOT / "deploy/k8s/base/nats-auth.conf").read_text() == nats_access.authorization_config()


def test_every_user_has_a_password_variable_in_the_kubernetes_config() -> None:
    rendered = nats_access.authorization_config()
    for user in nats_access.USERS:
        assert f"user: {user}, password: ${nats_access.password_variable(user)}," in rendered


def test_an_unknown_user_has_no_permissions() -> None:
    with pytest.raises(ValueError, match="unknown NATS user 'crm'"):
        nats_access.permissions("crm")
