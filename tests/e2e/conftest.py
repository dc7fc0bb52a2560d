"""The whole stack, started the way `make run` starts it, with a real SMTP server and the provider servers owned by
the test."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.nats_server import free_port
from devstack.provider_sinks import NOT_ON_WHATSAPP, ProviderSinks, SinksThread
from devstack.smtp_sink import MailboxHandler, start_sink
from devstack.stack import Ports, Stack
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.campaigns.v1 import service_pb2_grpc as campaigns_grpc

E2E_API_KEY = "xsk_e2e_4f7a9c2d1e8b6a5f3c0d"
ROOT = Path(__file__).resolve().parents[2]
AUTH = (("x-api-key", E2E_API_KEY),)


@dataclass
class RunningStack:
    stack: Stack
    mailbox: MailboxHandler
    var_dir: Path
    providers: ProviderSinks


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    var_dir = tmp_path_factory.mktemp("stack")
    smtp_port = free_port()
    controller, mailbox = start_sink(var_dir / "mail", smtp_port)
    ports = Ports.free(smtp=smtp_port)
    sinks = ProviderSinks(
        log_dir=var_dir / "providers",
        whatsapp_webhook_url=f"http://127.0.0.1:{ports.gateway_http}/webhooks/whatsapp",
        not_on_whatsapp=NOT_ON_WHATSAPP,
    )
    providers = SinksThread(
        sinks, {"sms": ports.sms, "whatsapp": ports.whatsapp, "push": ports.push, "webhook": ports.webhook}
    ).start()
    stack = Stack(var_dir=var_dir, ports=ports, api_key=E2E_API_KEY)
    try:
        stack.start(timeout=90)
        yield RunningStack(stack, mailbox, var_dir, sinks)
    finally:
        stack.stop()
        providers.stop()
        controller.stop()


def approver_auth(running_stack: RunningStack) -> tuple[tuple[str, str]]:
    """A second key with only the approve scope, made with the gateway's CLI as an operator would (maker-checker)."""
    created = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "create", "--name", "campaign-approver", "--scopes", "approve"],
        env=running_stack.stack._env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return (("x-api-key", created.stdout.strip()),)


def xsell(stack: RunningStack, *args: str, key: str = E2E_API_KEY) -> subprocess.CompletedProcess[str]:
    """The `xsell` CLI against the running stack's gateway, as an operator runs it."""
    env = dict(os.environ, XSELL_GATEWAY=stack.stack.gateway_target, XSELL_API_KEY=key)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return json.loads(result.stdout) if result.stdout.lstrip().startswith(("{", "[")) else result.stdout


async def launched(
    api: campaigns_grpc.CampaignsServiceStub,
    campaign: campaign_resources.Campaign,
    approver: tuple[tuple[str, str]],
    request_prefix: str,
) -> campaign_resources.Campaign:
    """The campaign created, submitted by its maker, approved by a checker (`approver`) and launched."""
    created = (
        await api.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(request_id=f"{request_prefix}-create", campaign=campaign),
            metadata=AUTH,
        )
    ).campaign
    key = created.campaign_key
    await api.SubmitCampaign(
        campaigns_pb2.SubmitCampaignRequest(request_id=f"{request_prefix}-submit", campaign_key=key), metadata=AUTH
    )
    await api.ApproveCampaign(
        campaigns_pb2.ApproveCampaignRequest(request_id=f"{request_prefix}-approve", campaign_key=key),
        metadata=approver,
    )
    await api.LaunchCampaign(
        campaigns_pb2.LaunchCampaignRequest(request_id=f"{request_prefix}-launch", campaign_key=key), metadata=AUTH
    )
    return created
