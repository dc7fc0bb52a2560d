"""The xsell CLI's lifecycle answers, as a subprocess against a real gateway whose services answer as told: a
replayed launch says so."""

import grpc
from google.protobuf.message import Message

from gateway import scopes
from tests.integration.gateway.cli_process import xsell
from tests.integration.gateway.conftest import Downstream, GatewayFactory, Responder
from xsell.campaigns.v1 import resources_pb2 as campaign_resources
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2

CAMPAIGNS = "/xsell.campaigns.v1.CampaignsService/"
GET_CAMPAIGN = CAMPAIGNS + "GetCampaign"
LAUNCH = CAMPAIGNS + "LaunchCampaign"


def answer(message: Message) -> Responder:
    async def respond(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return message.SerializeToString()

    return respond


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
