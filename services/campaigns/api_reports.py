"""The reporting RPCs of CampaignsService: runs, and counts per campaign and per label from stored records."""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.errors import InvalidArgument
from plumbing.page_tokens import decode_token, encode_token
from services.campaigns import store
from services.campaigns.campaigns import unknown_campaign
from services.campaigns.messages import channel_value, timestamp
from services.campaigns.reports import Counts, run_counts, total
from xsell.campaigns.v1 import resources_pb2, service_pb2

DEFAULT_RUN_PAGE, MAX_RUN_PAGE = 50, 500
MAX_LABEL = 200


def counts_proto(counts: Counts) -> resources_pb2.ReportCounts:
    def by_reason(counter: Any) -> list[resources_pb2.ReasonCount]:
        # Largest first, then by name, so the answer is stable.
        ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
        return [resources_pb2.ReasonCount(reason=reason, count=count) for reason, count in ordered if count]

    return resources_pb2.ReportCounts(
        audience=counts.audience,
        held_out=counts.held_out,
        suppressed=counts.suppressed,
        suppressed_by_reason=by_reason(counts.suppressed_by_reason),
        capped=counts.capped,
        capped_by_reason=by_reason(counts.capped_by_reason),
        released=counts.released,
        dispatched=counts.dispatched,
        sent=counts.sent,
        delivered=counts.delivered,
        failed=counts.failed,
        opened=counts.opened,
        clicked=counts.clicked,
        replied=counts.replied,
        bounced=counts.bounced,
        complained=counts.complained,
        opted_out=counts.opted_out,
        render_failed=counts.render_failed,
        resent=counts.resent,
        resends_skipped_by_reason=by_reason(counts.resends_skipped_by_reason),
        fell_back=counts.fell_back,
        fallbacks_skipped_by_reason=by_reason(counts.fallbacks_skipped_by_reason),
        not_eligible=counts.not_eligible,
        not_eligible_by_reason=by_reason(counts.not_eligible_by_reason),
    )


def run_proto(run: Any, counts: Counts) -> resources_pb2.CampaignRun:
    message = resources_pb2.CampaignRun(run_id=run.run_id, campaign_key=run.campaign_key, counts=counts_proto(counts))
    if run.occurrence_at is not None:
        message.occurrence_time.CopyFrom(timestamp(run.occurrence_at))
    if run.materialized_at is not None:
        message.materialize_time.CopyFrom(timestamp(run.materialized_at))
    if run.completed_at is not None:
        message.complete_time.CopyFrom(timestamp(run.completed_at))
    return message


async def counts_per_run(
    session: AsyncSession, campaign_keys: Sequence[str], runs: Sequence[Any], *, only_these_runs: bool = False
) -> dict[str, Counts]:
    """Each run's counts: grouped queries over the campaigns' outreaches, exclusions and follow-up decisions."""
    run_ids = [run.run_id for run in runs] if only_these_runs else None
    outreaches = await store.outreach_counts(session, campaign_keys, run_ids)
    exclusions: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for run_id, kind, reason, people in await store.exclusion_counts(session, campaign_keys, run_ids):
        exclusions[run_id].append((kind, reason, people))
    skips: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for run_id, column, reason, originals in await store.follow_up_skips(session, campaign_keys, run_ids):
        skips[run_id].append((column, reason, originals))
    return {
        run.run_id: run_counts(
            outreaches.get(run.run_id, {}),
            exclusions.get(run.run_id, ()),
            run.skipped_render,
            skips.get(run.run_id, ()),
        )
        for run in runs
    }


class ReportsApi:
    """ListCampaignRuns, GetCampaignReport and GetLabelReport; state lives on the CampaignsApi instance."""

    db: Database

    async def ListCampaignRuns(
        self, request: service_pb2.ListCampaignRunsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListCampaignRunsResponse:
        if request.page_size < 0:
            raise InvalidArgument(
                f"page_size must be between 0 and {MAX_RUN_PAGE} (0 means {DEFAULT_RUN_PAGE})", field="page_size"
            )
        size = min(request.page_size or DEFAULT_RUN_PAGE, MAX_RUN_PAGE)
        before = decode_token("ListCampaignRuns", request.page_token, {"campaign_key": request.campaign_key}, "before")
        async with self.db.snapshot() as session:
            await _require_campaign(session, request.campaign_key)
            runs = await store.runs_page(session, request.campaign_key, before, size + 1)
            page = runs[:size]
            counts = await counts_per_run(session, [request.campaign_key], page, only_these_runs=True)
        response = service_pb2.ListCampaignRunsResponse(runs=[run_proto(run, counts[run.run_id]) for run in page])
        if len(runs) > size:
            response.next_page_token = encode_token(
                "ListCampaignRuns", {"campaign_key": request.campaign_key, "before": page[-1].run_id}
            )
        return response

    async def GetCampaignReport(
        self, request: service_pb2.GetCampaignReportRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetCampaignReportResponse:
        async with self.db.snapshot() as session:
            await _require_campaign(session, request.campaign_key)
            runs = await store.runs_of(session, [request.campaign_key])
            per_run = await counts_per_run(session, [request.campaign_key], runs)
        return service_pb2.GetCampaignReportResponse(
            campaign_key=request.campaign_key, counts=counts_proto(total(per_run.values()))
        )

    async def GetLabelReport(
        self, request: service_pb2.GetLabelReportRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetLabelReportResponse:
        label = request.label.strip()
        if not label or len(label) > MAX_LABEL:
            raise InvalidArgument(
                f"label is required (at most {MAX_LABEL} characters), e.g. 'Cross-Sell – Lumpsum'", field="label"
            )
        async with self.db.snapshot() as session:
            # The campaigns' current labels: relabelling a campaign moves its whole history.
            labelled = [row for row in await store.campaign_labels(session) if label in (row.labels or ())]
            keys = [row.campaign_key for row in labelled]
            runs = await store.runs_of(session, keys)
            per_run = await counts_per_run(session, keys, runs)
        per_campaign: dict[str, list[Counts]] = defaultdict(list)
        for run in runs:
            per_campaign[run.campaign_key].append(per_run[run.run_id])
        by_channel: dict[str, list[str]] = defaultdict(list)
        for row in labelled:
            by_channel[row.channel].append(row.campaign_key)
        return service_pb2.GetLabelReportResponse(
            label=label,
            campaign_count=len(labelled),
            counts=counts_proto(total(per_run.values())),
            channels=[
                service_pb2.ChannelCounts(
                    channel=channel_value(channel),  # type: ignore[arg-type]
                    campaign_count=len(members),
                    counts=counts_proto(total(c for key in members for c in per_campaign.get(key, ()))),
                )
                for channel, members in sorted(by_channel.items())
            ],
        )


async def _require_campaign(session: AsyncSession, campaign_key: str) -> None:
    if not campaign_key:
        raise InvalidArgument("campaign_key is required", field="campaign_key")
    if await store.get_campaign(session, campaign_key) is None:
        raise unknown_campaign(campaign_key)
