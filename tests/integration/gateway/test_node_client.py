"""Another language: a Node.js CRM built from the .proto files alone creates a campaign-tagged lead through the gateway.

@grpc/grpc-js and @grpc/proto-loader come from npm (tests/node/package-lock.json) into var/node/, once per lockfile.
"""

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway import scopes
from plumbing.bus import Bus
from plumbing.ids import new_id
from services import streams
from services.attribution.app import build as build_attribution
from services.attribution.settings import AttributionSettings
from tests.integration.gateway.conftest import GatewayFactory
from tests.waiting import eventually
from xsell.attribution.v1 import service_pb2 as attribution_pb2
from xsell.attribution.v1 import service_pb2_grpc as attribution_grpc
from xsell.campaigns.v1 import events_pb2 as campaign_events
from xsell.campaigns.v1 import resources_pb2 as campaigns_pb2
from xsell.type.v1 import channel_pb2

REPO = Path(__file__).resolve().parents[3]
CLIENT = REPO / "tests" / "node"
NODE_DIR = REPO / "var" / "node"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """Installs the client's packages under var/node/ unless the same lockfile was installed there before."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not on PATH; install Node.js 18+ (Debian: apt-get install nodejs npm)")
    lock = (CLIENT / "package-lock.json").read_bytes()
    stamp = NODE_DIR / ".installed"
    digest = hashlib.sha256((CLIENT / "package.json").read_bytes() + lock).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest and (NODE_DIR / "node_modules").is_dir()):
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(CLIENT / name, NODE_DIR / name)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--omit-lockfile-registry-resolved"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=300,
        )
        stamp.write_text(digest)
    return NODE_DIR / "node_modules"


@pytest.fixture
async def attribution_target(nats_url: str, nats_bus: Bus, tmp_path: Path) -> AsyncIterator[str]:
    await nats_bus.ensure_streams(streams.ALL_STREAMS)
    settings = AttributionSettings(
        grpc_port=0, nats_url=nats_url, var_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'attr.db'}"
    )
    process = await build_attribution(settings, TracerProvider())
    await process.start()
    yield f"127.0.0.1:{process.server.port}"
    await process.stop(0)


async def publish_outreach(bus: Bus, campaign_id: str) -> None:
    """What campaigns publishes when it creates an outreach: attribution learns the campaign ID from it."""
    event = campaign_events.OutreachCreated(
        event_id=new_id("evt_"),
        outreach=campaigns_pb2.Outreach(
            campaign_id=campaign_id,
            campaign_key="cmp_node",
            profile_id="prf_node",
            channel=channel_pb2.CHANNEL_EMAIL,
            trigger_code="T06",
        ),
    )
    await bus.js.publish(
        streams.OUTREACH_CREATED,
        event.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id, "Xsell-Campaign-Id": campaign_id},
    )


async def test_a_node_crm_creates_a_campaign_tagged_lead_and_reads_it_back(
    node_modules: Path, start_gateway: GatewayFactory, attribution_target: str, nats_bus: Bus
) -> None:
    gateway = await start_gateway(attribution_target=attribution_target)
    key = await gateway.add_key(scopes.CRM_LEADS, scopes.OUTREACH_READ, client="crm-node")
    campaign_id = f"CSELL-NOV-T06-{new_id()[-8:].upper()}"
    await publish_outreach(nats_bus, campaign_id)
    direct = attribution_grpc.AttributionServiceStub(gateway.channel())

    async def known() -> bool:
        try:
            await direct.GetCampaignAttribution(
                attribution_pb2.GetCampaignAttributionRequest(campaign_id=campaign_id),
                metadata=[("x-api-key", key)],
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False
        return True

    assert await eventually(known)

    node = await asyncio.create_subprocess_exec(
        "node",
        str(CLIENT / "create_lead.js"),
        str(REPO / "protos"),
        campaign_id,
        "CRM-LEAD-7781",
        env={**os.environ, "NODE_PATH": str(node_modules), "XSELL_GATEWAY": gateway.target, "XSELL_API_KEY": key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(node.communicate(), timeout=60)
    assert node.returncode == 0, stderr.decode()
    seen = json.loads(stdout)

    created = seen["created"]
    assert (created["campaign_id"], created["crm_lead_id"], created["origin"]) == (
        campaign_id,
        "CRM-LEAD-7781",
        "LEAD_ORIGIN_CRM",
    )
    assert created["lead_id"] and seen["retried"] == created, "the same request_id returns the first lead"
    assert seen["attribution"]["campaign_id"] == campaign_id
    assert [lead["lead_id"] for lead in seen["attribution"]["leads"]] == [created["lead_id"]]
    assert seen["unauthenticated"] == {
        "code": grpc.StatusCode.UNAUTHENTICATED.value[0],
        "details": "send your API key in the x-api-key metadata",
    }
