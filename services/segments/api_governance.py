"""Maker-checker: versions, submission, approval by someone else, archive, and the audit log."""

from dataclasses import dataclass
from datetime import datetime

import grpc
import structlog
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.errors import PRECONDITION_REFERENCE, FailedPrecondition, InvalidArgument
from plumbing.grpc_server import caller_of
from plumbing.idempotency import Idempotency
from plumbing.outbox import utcnow
from plumbing.page_tokens import decode_token, encode_token, page_size
from services.segments import governance, store
from services.segments.api_support import (
    load_segment,
    load_version,
    segment_proto,
    segment_subject,
    timestamp,
)
from services.segments.governance import Action, VersionState
from services.segments.rules import Rule, RuleError, parse_rule, references
from xsell.segments.v1 import resources_pb2, service_pb2

log = structlog.get_logger(__name__)

MAX_DISPLAY_NAME, MAX_DESCRIPTION = 200, 2000
AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX = 100, 1000


@dataclass(frozen=True)
class Definition:
    """A validated segment definition, ready to be stored as a version."""

    display_name: str
    description: str
    rule: Rule
    rule_bytes: bytes

    def version_row(self, segment_id: str, version: int, author: str, now: datetime) -> store.VersionRow:
        return store.VersionRow(
            segment_id=segment_id,
            version=version,
            display_name=self.display_name,
            description=self.description,
            rule=self.rule_bytes,
            state=VersionState.DRAFT,
            author=author,
            approver="",
            create_time=now,
            update_time=now,
        )


def validate_definition(
    display_name: str, description: str, rule: resources_pb2.Rule, *, prefix: str = ""
) -> Definition:
    """Checks the name, description and rule of a definition; InvalidArgument names the field at fault."""
    name = display_name.strip()
    if len(name) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"display_name must be at most {MAX_DISPLAY_NAME} characters, got {len(name)}",
            field=f"{prefix}display_name",
        )
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"description must be at most {MAX_DESCRIPTION} characters", field=f"{prefix}description")
    try:
        parsed = parse_rule(rule, f"{prefix}rule")
    except RuleError as error:
        raise InvalidArgument(error.message, field=error.path) from None
    return Definition(name, description, parsed, rule.SerializeToString(deterministic=True))


def version_ref(version: store.VersionRow) -> governance.VersionRef:
    return governance.VersionRef(version.segment_id, version.version, VersionState(version.state), version.author)


def audit_proto(row: store.AuditRow) -> resources_pb2.AuditEntry:
    return resources_pb2.AuditEntry(
        segment_id=row.segment_id,
        version=row.version,
        action=row.action,
        actor=row.actor,
        time=timestamp(row.time),
        note=row.note,
    )


def _note(text: str, *, required: bool, field: str) -> str:
    try:
        return governance.reason(text, required=required, field=field)
    except governance.NoteProblem as problem:
        raise InvalidArgument(problem.message, field=field) from None


class GovernanceApi:
    """The governance RPCs of SegmentsApi; state lives on the SegmentsApi instance."""

    db: Database
    idempotency: Idempotency
    tracer: trace.Tracer

    async def _check_references(self, session: AsyncSession, rule: Rule, segment_id: str | None) -> None:
        """Every referenced segment exists and is not archived, and none leads back to `segment_id` (a cycle)."""
        referenced = list(references(rule))
        if not referenced:
            return
        states = await store.segment_states(session, (r.segment_id for r in referenced))
        for reference in referenced:
            state = states.get(reference.segment_id)
            if state is None:
                raise InvalidArgument(
                    f"segment {reference.segment_id} does not exist; refer to the id of an existing segment",
                    field=reference.path,
                )
            if state == store.ARCHIVED:
                raise InvalidArgument(
                    f"segment {reference.segment_id} is ARCHIVED; refer to a draft or published segment",
                    field=reference.path,
                )
        if segment_id is None:
            return
        rules = {
            sid: parse_rule(resources_pb2.Rule.FromString(raw))
            for sid, raw in (await store.live_rules(session)).items()
        }
        for reference in referenced:
            seen: set[str] = set()
            pending = [reference.segment_id]
            while pending:
                current = pending.pop()
                if current == segment_id:
                    raise InvalidArgument(
                        f"segment {reference.segment_id} refers back to segment {segment_id}; "
                        "a segment cannot depend on itself",
                        field=reference.path,
                    )
                if current in seen or current not in rules:
                    continue
                seen.add(current)
                pending.extend(r.segment_id for r in references(rules[current]))

    async def _transition(
        self,
        session: AsyncSession,
        head: store.SegmentRow,
        version: store.VersionRow,
        state: VersionState,
        action: Action,
        actor: str,
        now: datetime,
        *,
        note: str = "",
        approver: str | None = None,
    ) -> resources_pb2.Segment:
        await store.set_version_state(session, head.segment_id, version.version, state, now, approver=approver)
        await store.add_audit(session, head.segment_id, version.version, action, actor, now, note)
        changed = await load_version(session, head, version.version)
        log.info("segment_transition", segment_id=head.segment_id, version=version.version, action=action.value)
        return segment_proto(head, changed)

    async def _pending(
        self, session: AsyncSession, segment_id: str, version: int
    ) -> tuple[store.SegmentRow, store.VersionRow]:
        """The segment (locked) and the version a transition names; version 0 is refused (say which one)."""
        if version <= 0:
            raise InvalidArgument(
                f"version is required: the version to act on (GetSegment shows the latest), got {version}",
                field="version",
            )
        head = await load_segment(session, segment_id, for_update=True)
        if head.state == store.ARCHIVED:
            raise FailedPrecondition(
                f"segment {segment_id} is ARCHIVED and cannot change; create a new segment instead",
                field="segment_id",
                subject=segment_subject(segment_id),
            )
        return head, await load_version(session, head, version)

    async def UpdateSegment(
        self, request: service_pb2.UpdateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.UpdateSegmentResponse:
        if not request.HasField("rule"):
            raise InvalidArgument("rule is required: the whole new rule of the segment", field="rule")
        definition = validate_definition(request.display_name, request.description, request.rule)
        actor = caller_of(context)
        now = utcnow()
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "UpdateSegment", request, service_pb2.UpdateSegmentResponse
            )
            if previous is not None:
                return previous
            head = await load_segment(session, request.segment_id, for_update=True)
            if head.state == store.ARCHIVED:
                raise FailedPrecondition(
                    f"segment {head.segment_id} is ARCHIVED and cannot change; create a new segment instead",
                    field="segment_id",
                    subject=segment_subject(head.segment_id),
                )
            await self._check_references(session, definition.rule, head.segment_id)
            latest = await load_version(session, head, 0)
            version = Definition(
                definition.display_name or latest.display_name,
                request.description or latest.description,
                definition.rule,
                definition.rule_bytes,
            ).version_row(head.segment_id, latest.version + 1, actor, now)
            await store.insert_version(session, version)
            await store.add_audit(session, head.segment_id, version.version, Action.UPDATED, actor, now)
            response = service_pb2.UpdateSegmentResponse(segment=segment_proto(head, version))
            await self.idempotency.remember(session, "UpdateSegment", request, response)
        log.info("segment_updated", segment_id=head.segment_id, version=version.version)
        return response

    async def SubmitSegment(
        self, request: service_pb2.SubmitSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.SubmitSegmentResponse:
        actor = caller_of(context)
        now = utcnow()
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "SubmitSegment", request, service_pb2.SubmitSegmentResponse
            )
            if previous is not None:
                return previous
            head, version = await self._pending(session, request.segment_id, request.version)
            try:
                state = governance.submit(version_ref(version))
            except governance.TransitionRefused as refused:
                raise FailedPrecondition(
                    refused.message, field="version", subject=segment_subject(head.segment_id), kind=refused.kind
                ) from None
            segment = await self._transition(session, head, version, state, Action.SUBMITTED, actor, now)
            response = service_pb2.SubmitSegmentResponse(segment=segment)
            await self.idempotency.remember(session, "SubmitSegment", request, response)
        return response

    async def ApproveSegment(
        self, request: service_pb2.ApproveSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ApproveSegmentResponse:
        note = _note(request.note, required=False, field="note")
        actor = caller_of(context)
        now = utcnow()
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "ApproveSegment", request, service_pb2.ApproveSegmentResponse
            )
            if previous is not None:
                return previous
            head, version = await self._pending(session, request.segment_id, request.version)
            try:
                state = governance.approve(version_ref(version), actor)
            except governance.TransitionRefused as refused:
                raise FailedPrecondition(
                    refused.message, field="version", subject=segment_subject(head.segment_id), kind=refused.kind
                ) from None
            segment = await self._transition(
                session, head, version, state, Action.APPROVED, actor, now, note=note, approver=actor
            )
            response = service_pb2.ApproveSegmentResponse(segment=segment)
            await self.idempotency.remember(session, "ApproveSegment", request, response)
        return response

    async def RejectSegment(
        self, request: service_pb2.RejectSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RejectSegmentResponse:
        reason = _note(request.reason, required=True, field="reason")
        actor = caller_of(context)
        now = utcnow()
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "RejectSegment", request, service_pb2.RejectSegmentResponse
            )
            if previous is not None:
                return previous
            head, version = await self._pending(session, request.segment_id, request.version)
            try:
                state = governance.reject(version_ref(version))
            except governance.TransitionRefused as refused:
                raise FailedPrecondition(
                    refused.message, field="version", subject=segment_subject(head.segment_id), kind=refused.kind
                ) from None
            segment = await self._transition(session, head, version, state, Action.REJECTED, actor, now, note=reason)
            response = service_pb2.RejectSegmentResponse(segment=segment)
            await self.idempotency.remember(session, "RejectSegment", request, response)
        return response

    async def ArchiveSegment(
        self, request: service_pb2.ArchiveSegmentRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ArchiveSegmentResponse:
        actor = caller_of(context)
        now = utcnow()
        trace.get_current_span().set_attribute("segment.id", request.segment_id)
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "ArchiveSegment", request, service_pb2.ArchiveSegmentResponse
            )
            if previous is not None:
                return previous
            await store.lock_maintenance(session)
            head = await load_segment(session, request.segment_id, for_update=True)
            if head.state == store.ARCHIVED:
                raise FailedPrecondition(
                    f"segment {head.segment_id} is already ARCHIVED; create a new segment instead",
                    field="segment_id",
                    subject=segment_subject(head.segment_id),
                )
            dependants = sorted(
                sid
                for sid, raw in (await store.live_rules(session, published_only=True)).items()
                if sid != head.segment_id
                and any(
                    r.segment_id == head.segment_id for r in references(parse_rule(resources_pb2.Rule.FromString(raw)))
                )
            )
            if dependants:
                raise FailedPrecondition(
                    f"segment {head.segment_id} is referred to by {', '.join(dependants)}; "
                    "archive those or remove the reference with UpdateSegment first",
                    field="segment_id",
                    subject=segment_subject(head.segment_id),
                    kind=PRECONDITION_REFERENCE,
                )
            latest = await load_version(session, head, 0)
            await store.mark_archived(session, head.segment_id)
            await store.archive_versions(session, head.segment_id, now)
            await store.add_audit(session, head.segment_id, latest.version, Action.ARCHIVED, actor, now)
            archived = await load_segment(session, head.segment_id)
            response = service_pb2.ArchiveSegmentResponse(
                segment=segment_proto(archived, await load_version(session, archived, latest.version))
            )
            await self.idempotency.remember(session, "ArchiveSegment", request, response)
        log.info("segment_archived", segment_id=head.segment_id)
        return response

    async def ListSegmentAudit(
        self, request: service_pb2.ListSegmentAuditRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListSegmentAuditResponse:
        size = page_size(request.page_size, AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX)
        after = decode_token("ListSegmentAudit", request.page_token, {"segment": request.segment_id}, "after")
        if after is not None and not after.isdigit():
            raise InvalidArgument(
                "page_token is not one this service issued; pass next_page_token unchanged", field="page_token"
            )
        async with self.db.snapshot() as session:
            head = await load_segment(session, request.segment_id)
            rows = await store.audit_page(session, head.segment_id, int(after) if after else None, size + 1)
        page = rows[:size]
        token = (
            encode_token("ListSegmentAudit", {"segment": head.segment_id, "after": str(page[-1].id)})
            if len(rows) > size
            else ""
        )
        return service_pb2.ListSegmentAuditResponse(entries=[audit_proto(r) for r in page], next_page_token=token)
