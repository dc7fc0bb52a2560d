"""ExplainOutreach: why a person did or did not get a campaign, for support agents and SREs."""

import grpc
from opentelemetry import trace

from plumbing.db import Database
from plumbing.errors import InvalidArgument, NotFound
from plumbing.outbox import utcnow
from services.campaigns import store
from services.campaigns.explain import Decision, explain
from services.campaigns.messages import channel_value
from xsell.campaigns.v1 import service_pb2

DEFAULT_RUNS, MAX_RUNS = 20, 200
MAX_ID = 200


def decision_proto(decision: Decision) -> service_pb2.OutreachDecision:
    return service_pb2.OutreachDecision(
        run_id=decision.run_id,
        outcome=service_pb2.OutreachOutcome.Value(f"OUTREACH_OUTCOME_{decision.outcome.name}"),
        reason=decision.reason,
        campaign_id=decision.campaign_id,
        channel=channel_value(decision.channel) if decision.channel else 0,  # type: ignore[arg-type]
    )


class ExplainApi:
    """ExplainOutreach; state lives on the CampaignsApi instance."""

    db: Database

    async def ExplainOutreach(
        self, request: service_pb2.ExplainOutreachRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ExplainOutreachResponse:
        if not request.campaign_key:
            raise InvalidArgument("campaign_key is required: the campaign to explain", field="campaign_key")
        if not request.profile_id or len(request.profile_id) > MAX_ID:
            raise InvalidArgument(
                f"profile_id is required, at most {MAX_ID} characters: the person to explain", field="profile_id"
            )
        if not 0 <= request.max_runs <= MAX_RUNS:
            raise InvalidArgument(f"max_runs must be 0 (default {DEFAULT_RUNS}) to {MAX_RUNS}", field="max_runs")
        trace.get_current_span().set_attribute("campaign.key", request.campaign_key)
        async with self.db.snapshot() as session:
            campaign = await store.get_campaign(session, request.campaign_key)
            if campaign is None:
                raise NotFound(
                    f"campaign {request.campaign_key} not found; ListCampaigns shows them", field="campaign_key"
                )
            runs = await store.runs_page(session, request.campaign_key, None, request.max_runs or DEFAULT_RUNS)
            outreaches = await store.person_outreaches(session, request.campaign_key, request.profile_id)
            exclusions = await store.person_exclusions(session, request.campaign_key, request.profile_id)
        decisions = explain(
            dict(campaign._mapping),
            [dict(run._mapping) for run in runs],
            [dict(row._mapping) for row in outreaches],
            [dict(row._mapping) for row in exclusions],
            utcnow(),
        )
        return service_pb2.ExplainOutreachResponse(decisions=[decision_proto(d) for d in decisions])
