"""ExplainOutreach against real segments and campaigns servers: why each person did or did not get a campaign."""

from pathlib import Path

import grpc
import pytest

from plumbing.bus import Bus
from plumbing.ids import new_id
from services import streams
from services.campaigns.audience import held_out
from tests.integration.campaigns.test_audience_at_release import (
    NO_EMAIL,
    PEOPLE,
    _campaign,
    _completed,
    _launch,
    _outreaches,
    _segment,
    _suppress,
    stack_of,
)
from tests.waiting import eventually
from xsell.campaigns.v1 import service_pb2
from xsell.channels.v1 import events_pb2 as channel_events
from xsell.channels.v1 import resources_pb2 as channel_resources
from xsell.segments.v1 import resources_pb2 as seg
from xsell.type.v1 import channel_pb2

api = service_pb2


async def test_each_person_gets_the_reason_release_and_dispatch_recorded(
    database_url: str, nats_url: str, tmp_path: Path, nats_bus: Bus
) -> None:
    async with stack_of(database_url, nats_url, tmp_path) as stack:
        segment_id = await _segment(stack)
        await _suppress(stack, seg.Suppression(profile_id="cust-02", reason=seg.SUPPRESSION_REASON_OPT_OUT))
        draft = (
            await stack.campaigns.CreateCampaign(
                api.CreateCampaignRequest(request_id=new_id("req_"), campaign=_campaign(segment_id))
            )
        ).campaign

        async def explain(key: str, profile_id: str) -> list[api.OutreachDecision]:
            answer = await stack.campaigns.ExplainOutreach(
                api.ExplainOutreachRequest(campaign_key=key, profile_id=profile_id)
            )
            return list(answer.decisions)

        (not_run,) = await explain(draft.campaign_key, "cust-01")
        assert not_run.outcome == api.OUTREACH_OUTCOME_NOT_RUN and "DRAFT" in not_run.reason

        key = await _launch(stack, _campaign(segment_id, holdout_basis_points=3000))
        await _completed(stack, key)
        reached = {o.profile_id: o for o in await _outreaches(stack, key)}
        held = next(p for p in PEOPLE if p not in reached and p not in {"cust-02", NO_EMAIL} and held_out(key, p, 3000))
        member = next(iter(sorted(reached)))

        (suppressed,) = await explain(key, "cust-02")
        assert suppressed.outcome == api.OUTREACH_OUTCOME_SUPPRESSED and "opt out" in suppressed.reason
        (no_email,) = await explain(key, NO_EMAIL)
        assert no_email.outcome == api.OUTREACH_OUTCOME_SUPPRESSED and "no address" in no_email.reason
        (control,) = await explain(key, held)
        assert control.outcome == api.OUTREACH_OUTCOME_HELD_OUT
        (got,) = await explain(key, member)
        assert got.campaign_id == reached[member].campaign_id and got.channel == channel_pb2.CHANNEL_EMAIL
        assert got.outcome in (api.OUTREACH_OUTCOME_DISPATCHED, api.OUTREACH_OUTCOME_NOT_DISPATCHED)
        # Channels' reason for a failure is told with it: the provider's refusal reads apart from a suppression.
        failure = channel_events.DeliveryUpdated(
            event_id=new_id("evt_"),
            campaign_id=got.campaign_id,
            state=channel_resources.DELIVERY_STATE_FAILED,
            reason="suppressed at send time: SUPPRESSION_REASON_OPT_OUT",
        )
        await nats_bus.js.publish(streams.DELIVERY_UPDATED, failure.SerializeToString())

        async def failed() -> api.OutreachDecision | None:
            (decision,) = await explain(key, member)
            return decision if decision.outcome == api.OUTREACH_OUTCOME_FAILED else None

        told = (await eventually(failed)).reason
        assert told.startswith("the message failed at ")
        assert "UTC (suppressed at send time: SUPPRESSION_REASON_OPT_OUT)" in told
        (stranger,) = await explain(key, "someone-else")
        assert stranger.outcome == api.OUTREACH_OUTCOME_NOT_IN_AUDIENCE and segment_id in stranger.reason

        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await explain("no-such-campaign", member)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "campaign_key" in unknown.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await explain(key, "")
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "profile_id" in missing.value.details()
