"""The xsell CLI's read commands and lifecycle answers, as a subprocess against a real gateway whose services answer
as told: lookup, explain, outreaches, status, a replayed launch, flags before the command, a closed pipe."""

import asyncio
import os
import sys

import grpc
from google.protobuf.message import Message

from gateway import scopes
from tests.integration.gateway.cli_process import REPO, xsell
from tests.integration.gateway.conftest import Downstream, GatewayFactory, Responder, unused_target
from xsell.attribution.v1 import resources_pb2 as attribution_resources
from xsell.attribution.v1 import service_pb2 as attribution_pb2
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.channels.v1 import service_pb2 as channels_pb2
from xsell.type.v1 import channel_pb2, money_pb2

CAMPAIGNS = "/xsell.campaigns.v1.CampaignsService/"
GET_OUTREACH = CAMPAIGNS + "GetOutreach"
GET_CAMPAIGN = CAMPAIGNS + "GetCampaign"
LAUNCH = CAMPAIGNS + "LaunchCampaign"
LIST_RUNS = CAMPAIGNS + "ListCampaignRuns"
LIST_OUTREACHES = CAMPAIGNS + "ListOutreaches"
EXPLAIN = CAMPAIGNS + "ExplainOutreach"
GET_MESSAGE = "/xsell.channels.v1.ChannelsService/GetMessage"
GET_ATTRIBUTION = "/xsell.attribution.v1.AttributionService/GetCampaignAttribution"
CAMPAIGN_ID = "CSELL-NOV-T00-0001"


def answer(message: Message) -> Responder:
    async def respond(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return message.SerializeToString()

    return respond


def not_found(text: str) -> Responder:
    async def respond(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, text)
        raise AssertionError("abort returns only by raising")

    return respond


def _inr(rupees: int) -> money_pb2.Money:
    return money_pb2.Money(minor_units=rupees * 100, currency_code="INR")


def _outreach(campaign_id: str, profile_id: str) -> campaign_resources.Outreach:
    outreach = campaign_resources.Outreach(
        campaign_id=campaign_id,
        campaign_key="cmp_1",
        profile_id=profile_id,
        channel=channel_pb2.CHANNEL_EMAIL,
        trigger_code="T00",
        offer=campaign_resources.Offer(product_code="MF_LUMPSUM", amount=_inr(25_000)),
        run_id="run_1",
    )
    outreach.create_time.FromJsonString("2026-11-26T07:58:32Z")
    return outreach


def _message(campaign_id: str) -> channel_resources.Message:
    message = channel_resources.Message(
        campaign_id=campaign_id,
        channel=channel_pb2.CHANNEL_EMAIL,
        state=channel_resources.DELIVERY_STATE_DELIVERED,
        provider_message_id="<abc@xsell.local>",
    )
    for step, when, detail in (
        (channel_resources.TimelineEntry(delivery_state=channel_resources.DELIVERY_STATE_QUEUED), "07:58:33", ""),
        (channel_resources.TimelineEntry(delivery_state=channel_resources.DELIVERY_STATE_SENT), "07:58:34", "250"),
        (channel_resources.TimelineEntry(engagement_kind=channel_resources.ENGAGEMENT_KIND_CLICKED), "08:10:00", "x"),
    ):
        step.occur_time.FromJsonString(f"2026-11-26T{when}Z")
        step.detail = detail
        message.timeline.append(step)
    return message


async def test_lookup_prints_the_outreach_its_timeline_and_its_loans(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CRM_LEADS)
    attribution = attribution_resources.CampaignAttribution(
        campaign_id=CAMPAIGN_ID,
        disbursed_amount=_inr(500_000),
        lifetime_revenue=_inr(42_000),
        funnel=attribution_resources.Funnel(sent=1, delivered=1, clicked=1, applied=1, disbursed=1),
        loans=[
            attribution_resources.Loan(
                loan_number="LA-2026-0001",
                product_code="MF_LUMPSUM",
                stage=attribution_resources.LOAN_STAGE_DISBURSED,
                disbursed_amount=_inr(500_000),
            )
        ],
    )
    downstream.services.responders[GET_OUTREACH] = answer(
        campaigns_pb2.GetOutreachResponse(outreach=_outreach(CAMPAIGN_ID, "demo-0001"))
    )
    downstream.services.responders[GET_MESSAGE] = answer(channels_pb2.GetMessageResponse(message=_message(CAMPAIGN_ID)))
    downstream.services.responders[GET_ATTRIBUTION] = answer(
        attribution_pb2.GetCampaignAttributionResponse(attribution=attribution)
    )

    code, stdout, stderr = await xsell(gateway.target, key, "lookup", CAMPAIGN_ID)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == CAMPAIGN_ID
    assert "campaign cmp_1  profile demo-0001  channel email  trigger T00" in lines[1]
    assert "offer MF_LUMPSUM ₹25,000  created 2026-11-26 07:58:32Z  run run_1" in lines[2]
    assert "message     DELIVERED  provider id <abc@xsell.local>" in lines
    assert "2026-11-26 07:58:34Z  sent     250" in lines
    assert "2026-11-26 08:10:00Z  clicked  x" in lines
    assert any(line.startswith("funnel      sent 1, delivered 1, opened 0, clicked 1") for line in lines), stdout
    assert any(line.startswith("LA-2026-0001  MF_LUMPSUM  DISBURSED") and "₹5,00,000" in line for line in lines)

    code, stdout, _ = await xsell(gateway.target, key, "--json", "lookup", CAMPAIGN_ID)
    assert code == 0 and '"provider_message_id": "<abc@xsell.local>"' in stdout


async def test_lookup_before_dispatch_points_to_explain_and_a_narrow_key_to_its_scope(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CRM_LEADS)
    downstream.services.responders[GET_OUTREACH] = answer(
        campaigns_pb2.GetOutreachResponse(outreach=_outreach(CAMPAIGN_ID, "demo-0002"))
    )
    downstream.services.responders[GET_MESSAGE] = not_found("no message")
    downstream.services.responders[GET_ATTRIBUTION] = not_found("nothing attributed")
    code, stdout, stderr = await xsell(gateway.target, key, "lookup", CAMPAIGN_ID)
    assert code == 0, stderr
    assert "`xsell explain cmp_1 demo-0002` says which" in stdout
    assert "attribution nothing attributed yet" in stdout

    support = await gateway.add_key(scopes.OUTREACH_READ)
    code, _, stderr = await xsell(gateway.target, support, "lookup", CAMPAIGN_ID)
    assert code == 1
    assert stderr.startswith("error: PERMISSION_DENIED: ")
    assert "needs a key with crm.leads" in stderr and "xsell explain" in stderr


async def test_explain_and_outreaches_list_decisions_and_message_states(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CAMPAIGNS_MANAGE, scopes.OUTREACH_READ)
    downstream.services.responders[EXPLAIN] = answer(
        campaigns_pb2.ExplainOutreachResponse(
            decisions=[
                campaigns_pb2.OutreachDecision(
                    run_id="run_1",
                    outcome=campaigns_pb2.OUTREACH_OUTCOME_QUIET_HOURS,
                    reason="held until 09:00 Asia/Kolkata (quiet hours)",
                    campaign_id=CAMPAIGN_ID,
                    channel=channel_pb2.CHANNEL_EMAIL,
                )
            ]
        )
    )
    code, stdout, stderr = await xsell(gateway.target, key, "explain", "cmp_1", "demo-0001")
    assert code == 0, stderr
    assert stdout.splitlines() == [
        "RUN    OUTCOME      CAMPAIGN ID         CHANNEL  REASON",
        f"run_1  QUIET_HOURS  {CAMPAIGN_ID}  email    held until 09:00 Asia/Kolkata (quiet hours)",
    ]
    (explained,) = downstream.services.to(EXPLAIN)
    request = campaigns_pb2.ExplainOutreachRequest.FromString(explained.request)
    assert (request.campaign_key, request.profile_id) == ("cmp_1", "demo-0001")

    second = "CSELL-NOV-T00-0002"
    downstream.services.responders[LIST_OUTREACHES] = answer(
        campaigns_pb2.ListOutreachesResponse(
            outreaches=[_outreach(CAMPAIGN_ID, "demo-0001"), _outreach(second, "demo-0002")]
        )
    )

    async def message_of(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        campaign_id = channels_pb2.GetMessageRequest.FromString(request).campaign_id
        if campaign_id == second:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no message")
        return channels_pb2.GetMessageResponse(message=_message(campaign_id)).SerializeToString()

    downstream.services.responders[GET_MESSAGE] = message_of
    code, stdout, stderr = await xsell(gateway.target, key, "outreaches", "cmp_1")
    assert code == 0, stderr
    rows = [line.split() for line in stdout.splitlines()]
    assert rows[0][:4] == ["CAMPAIGN", "ID", "PROFILE", "CHANNEL"]
    assert [row[:4] for row in rows[1:]] == [
        [CAMPAIGN_ID, "demo-0001", "email", "DELIVERED"],
        [second, "demo-0002", "email", "-"],
    ]


async def test_status_says_why_released_outreaches_are_not_dispatched(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CAMPAIGNS_MANAGE)
    campaign = campaign_resources.Campaign(
        campaign_key="cmp_1",
        display_name="Lumpsum",
        state=campaign_resources.CAMPAIGN_STATE_RUNNING,
        quiet_hours=campaign_resources.QuietHours(start="21:00", end="09:00"),
        schedule=campaign_resources.Schedule(time_zone="Asia/Kolkata"),
    )
    run = campaign_resources.CampaignRun(
        run_id="run_1", counts=campaign_resources.ReportCounts(audience=3, released=3, dispatched=0)
    )
    downstream.services.responders[GET_CAMPAIGN] = answer(campaigns_pb2.GetCampaignResponse(campaign=campaign))
    downstream.services.responders[LIST_RUNS] = answer(campaigns_pb2.ListCampaignRunsResponse(runs=[run]))
    code, stdout, stderr = await xsell(gateway.target, key, "status", "cmp_1")
    assert code == 0, stderr
    assert "3 released outreaches are not dispatched yet:" in stdout
    assert "quiet hours 21:00-09:00 (each recipient's local time) hold them until they end; in Asia/Kolkata" in stdout
    assert "`xsell explain cmp_1 <profile_id>` says why for one person" in stdout


async def test_launching_a_completed_campaign_again_says_it_was_a_replay(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CAMPAIGNS_MANAGE)
    now = campaign_resources.Campaign(
        campaign_key="cmp_1", version=1, state=campaign_resources.CAMPAIGN_STATE_COMPLETED
    )
    then = campaign_resources.Campaign(campaign_key="cmp_1", version=1, state=campaign_resources.CAMPAIGN_STATE_RUNNING)
    downstream.services.responders[GET_CAMPAIGN] = answer(campaigns_pb2.GetCampaignResponse(campaign=now))
    downstream.services.responders[LAUNCH] = answer(campaigns_pb2.LaunchCampaignResponse(campaign=then))
    code, stdout, stderr = await xsell(gateway.target, key, "campaigns", "launch", "cmp_1")
    assert code == 0, stderr
    assert stdout == "cmp_1 COMPLETED version 1\n"
    assert stderr.startswith("replayed: the service answered with its answer to the first launch with this request id")
    assert stderr.rstrip().endswith("campaign cmp_1 is now COMPLETED")

    code, stdout, stderr = await xsell(gateway.target, key, "campaigns", "launch", "cmp_1", "--json")
    assert code == 0 and '"state": "CAMPAIGN_STATE_COMPLETED"' in stdout and "replayed" in stderr

    approved = campaign_resources.Campaign(
        campaign_key="cmp_1", version=1, state=campaign_resources.CAMPAIGN_STATE_APPROVED
    )
    downstream.services.responders[GET_CAMPAIGN] = answer(campaigns_pb2.GetCampaignResponse(campaign=approved))
    code, stdout, stderr = await xsell(gateway.target, key, "campaigns", "launch", "cmp_1")
    assert (code, stdout, stderr) == (0, "cmp_1 RUNNING version 1\n", ""), "a first launch is no replay"


async def test_connection_flags_before_the_command_are_used(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CAMPAIGNS_MANAGE)
    downstream.services.responders[CAMPAIGNS + "ListCampaigns"] = answer(campaigns_pb2.ListCampaignsResponse())
    code, stdout, stderr = await xsell(
        unused_target(),
        "xsk_not_this_one_x",
        "--json",
        "--gateway",
        gateway.target,
        "--api-key",
        key,
        "campaigns",
        "list",
    )
    assert (code, stdout) == (0, "[]\n"), stderr


async def test_a_closed_pipe_ends_the_command_quietly(start_gateway: GatewayFactory, downstream: Downstream) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CAMPAIGNS_MANAGE)
    downstream.services.responders[CAMPAIGNS + "ListCampaigns"] = answer(campaigns_pb2.ListCampaignsResponse())
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the CLI writes, as after `| head -1` has read its line
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli",
            "campaigns",
            "list",
            cwd=REPO,
            env={**os.environ, "XSELL_GATEWAY": gateway.target, "XSELL_API_KEY": key},
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 141
    assert stderr.decode() == ""
