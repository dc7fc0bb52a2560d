"""JetStream's store shared out among the streams, on a real server with the accounts of services/nats_access.py: each
stream may fill its share of XSELL's store, and one that is full refuses what comes (its publisher keeps it) while
the other streams go on."""

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import structlog
from nats.js import api

from devstack.nats_server import NatsServer
from devstack.stack import nats_passwords
from plumbing.bus import Bus, PublishFailed, inbox_prefix
from services import nats_access, nats_provision, streams
from tests.integration.nats_users import service_bus
from xsell.segments.v1 import service_pb2 as segments_api

pytestmark = pytest.mark.xdist_group("nats-store")

STORE = "12MB"
STORE_BYTES = 12 * 1024 * 1024


@pytest.fixture(scope="module")
def passwords(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return nats_passwords(tmp_path_factory.mktemp("var"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, str]) -> Iterator[NatsServer]:
    started = NatsServer(
        tmp_path_factory.mktemp("nats-store"), authorization=nats_access.authorization_config(passwords, store=STORE)
    ).start()
    yield started
    started.stop()


async def _provisioner(server: NatsServer, passwords: dict[str, str]) -> Bus:
    return await Bus.connect(server.url, "test-provision", user="provisioner", password=passwords["provisioner"])


@pytest.fixture(scope="module")
async def provisioned(server: NatsServer, passwords: dict[str, str]) -> None:
    bus = await _provisioner(server, passwords)
    try:
        await nats_provision.provision(bus)
    finally:
        await bus.drain()


def test_the_shares_of_the_store_add_up_to_the_whole_at_most() -> None:
    """Over the whole, JetStream refuses to make the last stream (it reserves each stream's limit)."""
    shares = [spec.store_share for spec in streams.ALL_STREAMS]
    assert all(share > 0 for share in shares)
    assert round(sum(shares), 9) <= 1.0


async def test_each_stream_may_fill_its_share_of_the_account_store(
    server: NatsServer, passwords: dict[str, str], provisioned: None
) -> None:
    bus = await _provisioner(server, passwords)
    try:
        assert await bus.account_store() == STORE_BYTES
        for spec in streams.ALL_STREAMS:
            config = (await bus.js.stream_info(spec.name)).config
            assert config.max_bytes == int(spec.store_share * STORE_BYTES), spec.name
            assert config.discard == api.DiscardPolicy.NEW, spec.name
    finally:
        await bus.drain()


async def test_a_stream_made_before_the_limit_gets_it_at_the_next_provisioning(
    server: NatsServer, passwords: dict[str, str], provisioned: None
) -> None:
    """An upgrade: streams made without a byte limit (or with another share) are given theirs."""
    bus = await _provisioner(server, passwords)
    try:
        stream = streams.ATTRIBUTION_STREAM
        config = (await bus.js.stream_info(stream.name)).config
        config.max_bytes, config.discard = -1, api.DiscardPolicy.OLD
        await bus.js.update_stream(config)
        await nats_provision.provision(bus)
        config = (await bus.js.stream_info(stream.name)).config
        assert (config.max_bytes, config.discard) == (int(stream.store_share * STORE_BYTES), api.DiscardPolicy.NEW)
    finally:
        await bus.drain()


async def test_a_feed_filling_its_stream_is_refused_and_the_services_go_on(
    server: NatsServer, passwords: dict[str, str], provisioned: None
) -> None:
    """A feed publishing without end fills XSELL_INGEST only: its next batch is refused, what the stream holds stays
    (the oldest is not dropped before segments took it), and campaigns still publishes its events."""
    share = int(streams.INGEST_STREAM.store_share * STORE_BYTES)
    feed = await nats.connect(server.url, user="feeds", password=passwords["feeds"], inbox_prefix=inbox_prefix("feeds"))
    js = feed.jetstream()
    batch = segments_api.UpsertProfilesRequest(request_id="0").SerializeToString() + b"\0" * 100_000
    stored = 0
    try:
        with pytest.raises(nats.js.errors.Error) as refused:
            for _ in range(share // len(batch) + 5):
                await js.publish(streams.INGEST_PROFILES, batch)
                stored += 1
        assert share // len(batch) - 2 <= stored <= share // len(batch)
        assert "maximum bytes exceeded" in str(refused.value.description)  # type: ignore[attr-defined]
    finally:
        await feed.close()

    campaigns = await service_bus(server, passwords, "campaigns")
    operator = await Bus.connect(server.url, "test-operator", user="operator", password=passwords["operator"])
    try:
        assert await campaigns.publish_batch([(streams.OUTREACH_CREATED, b"an event", {})]) == [False]
        ingest = (await operator.js.stream_info(streams.INGEST_STREAM.name)).state
        assert (ingest.first_seq, ingest.messages) == (1, stored)
        assert ingest.bytes <= share
    finally:
        await campaigns.drain()
        await operator.drain()


async def test_a_full_stream_refuses_a_services_batch_with_the_reason(
    server: NatsServer, passwords: dict[str, str], provisioned: None
) -> None:
    """What the outbox relay sees (it keeps the events and publishes them again later, tests/integration/
    test_outbox_inbox.py): the refusal names the full stream."""
    attribution = await service_bus(server, passwords, "attribution")
    share = int(streams.ATTRIBUTION_STREAM.store_share * STORE_BYTES)
    event = b"\0" * 50_000
    try:
        with pytest.raises(PublishFailed, match="maximum bytes exceeded"):
            for _ in range(share // len(event) + 5):
                await attribution.publish_batch([(streams.CONVERSION_RECORDED, event, {})])
    finally:
        await attribution.drain()


def test_the_store_size_is_written_as_nats_reads_it() -> None:
    assert nats_access.store_bytes("24GB") == 24 * 1024**3
    assert nats_access.store_bytes("512MB") == 512 * 1024**2
    for wrong in ("24G", "24 GB", "0GB", "1.5GB", "24gb"):
        with pytest.raises(ValueError, match="whole number followed by MB, GB or TB"):
            nats_access.authorization_config({}, store=wrong)
        assert nats_access.store_problems({"NATS_MAX_FILE_STORE": "9GB", "NATS_XSELL_STORE": wrong}) == [
            f"NATS_XSELL_STORE {wrong!r}: write a whole number followed by MB, GB or TB, e.g. 24GB"
        ]
    assert nats_access.store_problems({"NATS_MAX_FILE_STORE": "9GB", "NATS_XSELL_STORE": "27GB"}) == []
    assert nats_access.store_problems({"NATS_MAX_FILE_STORE": "9GB", "NATS_XSELL_STORE": "28GB"}) == [
        "NATS_XSELL_STORE 28GB is more than the 3 members' NATS_MAX_FILE_STORE 9GB: the streams would be given byte "
        "limits the members cannot hold"
    ]


async def test_the_kubernetes_store_sizes_are_read_by_the_real_server(tmp_path: Path) -> None:
    """nats.conf takes the member's from the pods' env, and the init container writes XSELL's from its own into the
    accounts it includes (nats_access.environment_config): NATS reads `24GB` from both as a size."""
    environment = {nats_access.password_variable(user): nats_access.new_password() for user in nats_access.USERS}
    environment |= {"NATS_MAX_FILE_STORE": "9GB", "NATS_XSELL_STORE": "24GB"}
    server = NatsServer(
        tmp_path / "nats", authorization=nats_access.environment_config(environment), environment=environment
    )
    server.start()
    try:
        password = environment[nats_access.password_variable("provisioner")]
        bus = await Bus.connect(server.url, "test-provision", user="provisioner", password=password)
        try:
            assert await bus.account_store() == 24 * 1024**3
        finally:
            await bus.drain()
    finally:
        server.stop()


async def test_a_smaller_store_or_a_member_without_one_leaves_the_limits_and_the_start_goes_on(
    tmp_path: Path, passwords: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS refuses any stream update once the account's store is below what the streams reserve, even one that
    lowers a limit: the provisioner keeps the limits it cannot change (and says how to lower them) instead of failing
    every service's start. A member that has no store limit (still on an older configuration in a rollout) does
    not take the limits away either."""
    store_dir = tmp_path / "nats"

    async def provision_on(store: str | None) -> dict[str, int]:
        server = NatsServer(store_dir, authorization=nats_access.authorization_config(passwords, store=store)).start()
        try:
            bus = await _provisioner(server, passwords)
            try:
                await nats_provision.provision(bus, within=5)
                return {s.name: (await bus.js.stream_info(s.name)).config.max_bytes or -1 for s in streams.ALL_STREAMS}
            finally:
                await bus.drain()
        finally:
            server.stop()

    made = await provision_on("12MB")
    assert made == {s.name: int(s.store_share * STORE_BYTES) for s in streams.ALL_STREAMS}
    # A release that also changes what a stream keeps: refused as well, and still the start goes on.
    shorter = dataclasses.replace(streams.INGEST_STREAM, max_age_seconds=3 * 24 * 3600.0)
    monkeypatch.setattr(
        streams, "ALL_STREAMS", tuple(shorter if s is streams.INGEST_STREAM else s for s in streams.ALL_STREAMS)
    )
    with structlog.testing.capture_logs() as logs:
        assert await provision_on("6MB") == made
    refused = [entry for entry in logs if entry["event"] == "stream_update_refused"]
    assert {entry["stream"] for entry in refused} == set(made)
    assert "lower each stream's max bytes first" in refused[0]["fix"]
    assert await provision_on(None) == made
