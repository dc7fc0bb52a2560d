"""The channels process killed (SIGKILL) at random points while it sends, then restarted: the provider servers' logs
match the ledger, with no message lost and none sent twice."""

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from devstack.provider_sinks import ProviderSinks
from plumbing.bus import Bus
from plumbing.db import Database
from services import streams
from services.channels import store
from services.channels.delivery import DeliveryState
from tests.integration.channels.support import dispatch_on, new_campaign_id, publish
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[3]
MESSAGES = 1200
KILLS = 3
CONCURRENCY = 16
"""Hand-overs in flight at once: at a kill each one to a provider without an idempotency key may end AMBIGUOUS."""


class ChannelsProcess:
    """`python -m services.channels` as its own process, so it can be killed without a chance to clean up."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.channels"], env=self.env, cwd=REPO, stdout=log, stderr=log
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
async def channels_process(
    database_url: str, nats_url: str, tmp_path: Path, provider_sinks: ProviderSinks
) -> AsyncIterator[ChannelsProcess]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("XSELL_")}
    settings = {
        "GRPC_PORT": "0",
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "VAR_DIR": str(tmp_path / "var"),
        "LOG_LEVEL": "warning",
        "RETRY_BASE_SECONDS": "0.05",
        "RETRY_CAP_SECONDS": "0.5",
        "DISPATCH_CONCURRENCY": str(CONCURRENCY),
        "PROVIDER_RATE_PER_SECOND": '{"sms": 100000, "webhook": 100000}',
        "PROVIDER_CONCURRENCY": '{"sms": 16, "webhook": 16}',
        **{name.upper(): str(value) for name, value in provider_sinks.channels_settings().items()},
    }
    env.update({f"XSELL_CHANNELS_{name}": value for name, value in settings.items()})
    # The repository and its generated stubs, whatever the virtualenv's .pth says.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "gen")])
    process = ChannelsProcess(env, tmp_path / "channels.log")
    yield process
    process.stop()


async def _wait_for(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, timeout=120.0, interval=0.01)


async def test_killed_at_random_points_no_message_is_lost_or_sent_twice(
    channels_process: ChannelsProcess, provider_sinks: ProviderSinks, nats_bus: Bus, database_url: str
) -> None:
    await nats_bus.ensure_streams(streams.ALL_STREAMS)
    rng = random.Random()
    channels_of = {new_campaign_id(): rng.choice(["sms", "webhook"]) for _ in range(MESSAGES)}
    for campaign_id, channel in channels_of.items():
        event = dispatch_on(channel, campaign_id, webhook_url=provider_sinks.webhook_url())
        await publish(nats_bus, event)

    def sent() -> int:
        return len(provider_sinks.sms.received) + len(provider_sinks.webhook.received)

    channels_process.start()
    # Kill points: after a random number of hand-overs in each third of the run, so the kill lands
    # wherever the process happens to be (intent written, request in flight, outcome being recorded).
    # Each kill may leave up to CONCURRENCY SMS AMBIGUOUS (never sent again), so a point is kept below what the sinks
    # can still reach after every kill: a last point in a share's final few dozen waited for sends that never come.
    share = MESSAGES // (KILLS + 1)
    reachable = share - KILLS * CONCURRENCY
    kill_points = [rng.randrange(k * share, k * share + reachable) for k in range(1, KILLS + 1)]
    for point in kill_points:
        await _wait_for(lambda point=point: sent() >= point)  # type: ignore[misc]
        channels_process.kill()
        channels_process.start()
    db = Database(database_url)
    try:

        async def settled() -> Counter[str] | None:
            async with db.transaction() as session:
                query = select(store.messages.c.state, func.count()).group_by(store.messages.c.state)
                rows = (await session.execute(query)).all()
            states = Counter({state: count for state, count in rows})
            done = sum(states.values()) == MESSAGES and not (states["QUEUED"] or states["SENDING"])
            return states if done else None

        states = await eventually(settled, timeout=180.0, interval=0.2)
        async with db.transaction() as session:
            ledger = dict((await session.execute(select(store.messages.c.campaign_id, store.messages.c.state))).all())
    finally:
        await db.dispose()

    received = Counter(r.campaign_id for sink in (provider_sinks.sms, provider_sinks.webhook) for r in sink.received)
    # Zero duplicates: no campaign ID reached a provider twice.
    assert [campaign_id for campaign_id, count in received.items() if count > 1] == []
    # Zero lost: every request has a ledger row in a final state, and every SENT one is at its provider.
    assert set(ledger) == set(channels_of)
    assert set(states) <= {DeliveryState.SENT.value, DeliveryState.AMBIGUOUS.value}
    assert [c for c, state in ledger.items() if state == DeliveryState.SENT.value and received[c] != 1] == []
    # Only a provider without an idempotency key leaves AMBIGUOUS behind; the webhook is asked again.
    ambiguous = [c for c, state in ledger.items() if state == DeliveryState.AMBIGUOUS.value]
    assert [c for c in ambiguous if channels_of[c] != "sms"] == []
    # Nothing reached a provider that the ledger does not know.
    assert set(received) <= set(ledger)
