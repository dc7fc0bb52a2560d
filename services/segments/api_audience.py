"""Preview with explain, membership explained for one person, and resumable member streaming."""

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime

import grpc
from opentelemetry import trace
from sqlalchemy import String, and_, literal
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.errors import PRECONDITION_VERSION, FailedPrecondition, InvalidArgument, NotFound
from plumbing.outbox import utcnow
from services.segments import explain, store, suppressions
from services.segments.api_support import load_published, load_segment, load_version, segment_subject, timestamp
from services.segments.api_suppressions import domain_suppression, suppression_proto
from services.segments.compiler import condition
from services.segments.rules import Rule, RuleError, parse_rule
from services.segments.values import Value, name_problem, to_proto
from xsell.segments.v1 import resources_pb2, service_pb2

SAMPLE_DEFAULT, SAMPLE_MAX = 10, 100
MAX_ATTRIBUTE_NAMES = 200
MAX_PROFILE_ID = 128


def attribute_names(names: Sequence[str], field: str = "attribute_names") -> list[str]:
    """The distinct requested attribute names, each a valid name."""
    distinct = list(dict.fromkeys(names))
    if len(distinct) > MAX_ATTRIBUTE_NAMES:
        raise InvalidArgument(f"at most {MAX_ATTRIBUTE_NAMES} {field} per request, got {len(distinct)}", field=field)
    for i, name in enumerate(distinct):
        if problem := name_problem(name, "attribute name"):
            raise InvalidArgument(problem, field=f"{field}[{i}]")
    return distinct


def member_proto(
    profile_id: str,
    entered_at: datetime,
    values: dict[str, Value],
    in_force: Sequence[tuple[str, str]] = (),
    channels: Sequence[str] = (),
) -> resources_pb2.Member:
    """`in_force`: the person's (channel, reason) suppressions; those on `channels` are its suppression_reasons."""
    return resources_pb2.Member(
        profile_id=profile_id,
        attributes={name: to_proto(value) for name, value in values.items()},
        enter_time=timestamp(entered_at),
        # Reason order (OPT_OUT first), so a caller that counts each person under one reason is deterministic.
        suppression_reasons=sorted(
            {suppressions.reason_number(reason) for channel, reason in in_force if channel in channels}  # type: ignore[misc]
        ),
        suppressions=[
            resources_pb2.Suppression(
                channel=suppressions.channel_number(channel),  # type: ignore[arg-type]
                reason=suppressions.reason_number(reason),  # type: ignore[arg-type]
            )
            for channel, reason in in_force
        ],
    )


def _channels(channel: int) -> tuple[str, ...]:
    try:
        return suppressions.channels_applying(channel)
    except suppressions.UnknownChannel:
        raise InvalidArgument(
            f"unknown channel {channel}; use CHANNEL_UNSPECIFIED for global suppressions only, or one channel",
            field="channel",
        ) from None


def _profile_id(profile_id: str, field: str = "profile_id", *, required: bool = True) -> str:
    if required and not profile_id:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(profile_id) > MAX_PROFILE_ID:
        raise InvalidArgument(f"{field} must be at most {MAX_PROFILE_ID} characters", field=field)
    return profile_id


class AudienceApi:
    """The audience RPCs of SegmentsApi; state lives on the SegmentsApi instance."""

    db: Database
    tracer: trace.Tracer
    stream_page_size: int
    _check_references: Callable[[AsyncSession, Rule, str | None], Awaitable[None]]

    async def PreviewSegment(
        self, request: service_pb2.PreviewSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.PreviewSegmentResponse:
        if request.sample_size < 0:
            raise InvalidArgument(
                f"sample_size must be 0 (default {SAMPLE_DEFAULT}) to {SAMPLE_MAX}, got {request.sample_size}",
                field="sample_size",
            )
        sample_size = min(request.sample_size or SAMPLE_DEFAULT, SAMPLE_MAX)
        target = request.WhichOneof("target")
        if target is None:
            raise InvalidArgument("set rule (an unsaved rule) or segment_id (a stored version)", field="target")
        now = utcnow()
        with self.tracer.start_as_current_span("preview") as span:
            async with self.db.snapshot() as session:
                if target == "rule":
                    try:
                        rule: Rule = parse_rule(request.rule, "rule")
                    except RuleError as error:
                        raise InvalidArgument(error.message, field=error.path) from None
                    # As CreateSegment would: a reference to no segment previewed as an empty audience.
                    await self._check_references(session, rule, None)
                else:
                    head = await load_segment(session, request.segment_id)
                    version = await load_version(session, head, request.version)
                    rule = parse_rule(resources_pb2.Rule.FromString(version.rule), "rule")
                    span.set_attribute("segment.id", head.segment_id)
                subject = store.profiles.c.profile_id
                # One set-based COUNT per node (and per AND prefix): the database does every count.
                nodes = explain.nodes(rule)
                explained = []
                for node in nodes:
                    matched = await store.count_matching(session, condition(node.rule, subject, now, everyone=True))
                    cumulative = 0
                    if node.funnel is not None:
                        funnel = and_(*(condition(r, subject, now, everyone=True) for r in node.funnel))
                        cumulative = matched if len(node.funnel) == 1 else await store.count_matching(session, funnel)
                    explained.append(
                        resources_pb2.ExplainNode(
                            path=node.path, summary=node.summary, matched_count=matched, cumulative_count=cumulative
                        )
                    )
                count = explained[0].matched_count
                sample = await store.sample_matching(session, condition(rule, subject, now, everyone=True), sample_size)
            span.set_attribute("segments.preview.count", count)
        return service_pb2.PreviewSegmentResponse(count=count, sample_profile_ids=sample, explain=explained)

    async def ExplainMembership(
        self, request: service_pb2.ExplainMembershipRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ExplainMembershipResponse:
        profile_id = _profile_id(request.profile_id)
        _channels(request.channel)
        now = utcnow()
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        async with self.db.snapshot() as session:
            head = await load_published(session, request.segment_id)
            if not await store.profile_exists(session, profile_id):
                raise NotFound(
                    f"profile {profile_id} not found; create it with UpsertProfiles or IngestEvents", field="profile_id"
                )
            rule = parse_rule(resources_pb2.Rule.FromString(head.rule), "rule")
            nodes = explain.nodes(rule)
            person = literal(profile_id, String(128))
            held = await store.evaluate_for(session, [condition(n.rule, person, now) for n in nodes])
            member = await store.is_member(session, head.segment_id, profile_id)
            stored = await store.suppressions_of(session, profile_id)
        forbidding = suppressions.in_force(
            [domain_suppression(s) for s in stored],
            request.channel,
            now,
        )
        by_key = {(s.channel, s.reason): s for s in stored}
        return service_pb2.ExplainMembershipResponse(
            satisfies_rule=held[0],
            is_member=member,
            eligible=member and not forbidding,
            conditions=[
                resources_pb2.ConditionResult(path=n.path, summary=n.summary, held=h)
                for n, h in zip(nodes, held, strict=True)
            ],
            suppressions=[suppression_proto(by_key[(s.channel, s.reason)]) for s in forbidding],
            segment_version=head.version,
        )

    async def StreamSegmentMembers(
        self, request: service_pb2.StreamSegmentMembersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[service_pb2.StreamSegmentMembersResponse]:
        names = attribute_names(request.attribute_names)
        after = _profile_id(request.after_profile_id, "after_profile_id", required=False) or None
        channels = _channels(request.channel)
        if request.version < 0:
            raise InvalidArgument(
                f"version must be 0 (the published one) or positive, got {request.version}", field="version"
            )
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        pinned = request.version
        streamed = 0
        while True:
            # One short snapshot per page, so a page's members and their attributes agree; nothing is held
            # (no lock, no snapshot, no rows) while the client reads, so memory stays one page whatever the size.
            async with self.db.snapshot() as session:
                head = await load_published(session, request.segment_id)
                if pinned and head.version != pinned:
                    raise FailedPrecondition(
                        f"segment {head.segment_id} publishes version {head.version}, not the pinned version "
                        f"{pinned}; stream version {head.version} or re-pin the campaign",
                        field="version",
                        subject=segment_subject(head.segment_id),
                        kind=PRECONDITION_VERSION,
                    )
                pinned = head.version
                page = await store.stream_page(
                    session,
                    head.segment_id,
                    after,
                    self.stream_page_size,
                    None if request.include_suppressed else channels,
                    utcnow(),
                )
                values = await store.attributes_of(session, [pid for pid, _ in page], names)
                in_force = (
                    await store.suppressions_in_force(session, [pid for pid, _ in page], utcnow())
                    if request.include_suppressed
                    else {}
                )
            if page:
                streamed += len(page)
                yield service_pb2.StreamSegmentMembersResponse(
                    members=[
                        member_proto(pid, entered, values.get(pid, {}), in_force.get(pid, ()), channels)
                        for pid, entered in page
                    ]
                )
                after = page[-1][0]
            if len(page) < self.stream_page_size:
                trace.get_current_span().set_attribute("segments.streamed", streamed)
                return
