"""The xsell CLI, as a subprocess against a real gateway whose services answer as told: how refusals read."""

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway import scopes
from tests.integration.gateway.cli_process import xsell
from tests.integration.gateway.conftest import Downstream, GatewayFactory, unused_target
from xsell.campaigns.v1 import service_pb2 as campaigns_pb2
from xsell.segments.v1 import service_pb2 as segments_pb2

REPORT = "/xsell.campaigns.v1.CampaignsService/GetCampaignReport"
LAUNCH = "/xsell.campaigns.v1.CampaignsService/LaunchCampaign"
GET_CAMPAIGN = "/xsell.campaigns.v1.CampaignsService/GetCampaign"
REJECT_CAMPAIGN = "/xsell.campaigns.v1.CampaignsService/RejectCampaign"
REJECT_SEGMENT = "/xsell.segments.v1.SegmentsService/RejectSegment"
APPROVE_CAMPAIGN = "/xsell.campaigns.v1.CampaignsService/ApproveCampaign"


async def test_report_says_when_the_deployment_does_not_serve_it(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.REPORTS_READ)

    async def unimplemented(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        raise AssertionError("abort returns only by raising")

    downstream.services.responders[REPORT] = unimplemented
    code, stdout, stderr = await xsell(gateway.target, key, "report", "cmp_1")
    assert (code, stdout) == (3, "")
    assert stderr.startswith(
        "error: UNIMPLEMENTED: this deployment's campaigns service does not serve GetCampaignReport"
    )
    assert "`xsell status cmp_1`" in stderr


async def test_a_refusal_prints_its_status_message_and_field_violations(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CAMPAIGNS_MANAGE)
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="campaign.schedule.time_zone", description="'Asia/Bombay' is not an IANA zone; e.g. Asia/Kolkata"
    )

    async def invalid(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message="the campaign cannot launch", details=[detail]
        )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the campaign cannot launch",
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )
        raise AssertionError("abort returns only by raising")

    downstream.services.responders[LAUNCH] = invalid
    code, _, stderr = await xsell(gateway.target, key, "campaigns", "launch", "cmp_1")
    assert code == 1
    assert stderr.splitlines() == [
        "error: INVALID_ARGUMENT: the campaign cannot launch",
        "  campaign.schedule.time_zone: 'Asia/Bombay' is not an IANA zone; e.g. Asia/Kolkata",
    ]
    (launched,) = downstream.services.to(LAUNCH)
    assert b"cmp_1" in launched.request and b"cli-" in launched.request, "the request carries a request_id"


async def test_no_gateway_and_no_key_read_as_what_to_set() -> None:
    code, _, stderr = await xsell(unused_target(), "xsk_a_bcdefghijklmnopq", "campaigns", "list", "--timeout", "3")
    assert code == 1
    assert stderr.startswith("error: UNAVAILABLE: ") and "set XSELL_GATEWAY or --gateway" in stderr, stderr


async def test_reject_sends_the_version_the_reason_and_a_request_id_per_version(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.APPROVE)
    for _ in range(2):
        code, _, stderr = await xsell(
            gateway.target, key, "campaigns", "reject", "cmp_1", "--version", "4", "--reason", "offer amount too high"
        )
        assert code == 0, stderr
    code, _, stderr = await xsell(gateway.target, key, "segments", "reject", "seg_1", "--version", "2", "--reason", "x")
    assert code == 0, stderr
    sent = [
        campaigns_pb2.RejectCampaignRequest.FromString(call.request) for call in downstream.services.to(REJECT_CAMPAIGN)
    ]
    assert [(r.campaign_key, r.version, r.reason) for r in sent] == [("cmp_1", 4, "offer amount too high")] * 2
    assert sent[0].request_id.startswith("cli-") and sent[0].request_id == sent[1].request_id
    (segment,) = [
        segments_pb2.RejectSegmentRequest.FromString(c.request) for c in downstream.services.to(REJECT_SEGMENT)
    ]
    assert (segment.segment_id, segment.version, segment.reason) == ("seg_1", 2, "x")
    assert [call.method for call in downstream.services.calls].count(GET_CAMPAIGN) == 0, (
        "an approve-only key reads nothing"
    )


async def test_an_approve_only_key_is_told_to_give_the_id_and_version(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.APPROVE)
    code, stdout, stderr = await xsell(gateway.target, key, "campaigns", "approve", "Lumpsum for SIP investors")
    assert (code, stdout) == (1, "")
    lines = stderr.splitlines()
    assert lines[0].startswith("error: PERMISSION_DENIED: this API key lacks the scope 'campaigns.manage'")
    assert lines[1:] == [
        "  this key may not list campaigns (ListCampaigns needs campaigns.manage), so it cannot find"
        " 'Lumpsum for SIP investors' by its name;",
        "  give the campaign's id and the version instead: xsell campaigns approve cmp_... --version N",
        "  (`xsell campaigns submit` printed both; `xsell campaigns list` shows them with a campaigns.manage key)",
    ]
    code, _, stderr = await xsell(gateway.target, key, "segments", "reject", "seg_1", "--reason", "too wide")
    assert code == 1
    assert stderr.splitlines()[1:] == [
        "  this key may not read segments (GetSegment needs segments.manage), so it cannot find the current version;",
        "  give it: xsell segments reject seg_1 --version N",
    ]
    assert downstream.services.calls == [], "the gateway refused both before any service was called"


async def test_self_approval_says_how_to_make_an_approver_key(
    start_gateway: GatewayFactory, downstream: Downstream
) -> None:
    gateway = await start_gateway()
    key = await gateway.add_key(scopes.CAMPAIGNS_MANAGE, scopes.APPROVE)

    async def own_version(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            "test-client wrote version 2 of campaign cmp_1 and cannot approve it; another person with the approve "
            "scope must (maker-checker)",
        )
        raise AssertionError("abort returns only by raising")

    downstream.services.responders[APPROVE_CAMPAIGN] = own_version
    code, _, stderr = await xsell(gateway.target, key, "campaigns", "approve", "cmp_1", "--version", "2")
    assert code == 1
    assert stderr.startswith("error: FAILED_PRECONDITION: test-client wrote version 2")
    assert "python -m gateway keys create --name approver --scopes approve" in stderr
    assert "then: XSELL_API_KEY=xsk_... xsell campaigns approve cmp_1 --version 2" in stderr
