"""Suppression lists: global and per channel, with reasons and expiry; they always win over membership."""

import json

import grpc
import structlog
from opentelemetry import trace

from plumbing.db import Database
from plumbing.errors import InvalidArgument
from plumbing.idempotency import Idempotency
from plumbing.outbox import utcnow
from plumbing.page_tokens import decode_token, encode_token, page_size
from plumbing.times import time_field
from services.addresses import MAX_ADDRESS
from services.segments import store, suppressions
from services.segments.api_support import (
    check_batch,
    record_errors,
    timestamp,
)
from services.segments.values import Value
from xsell.segments.v1 import resources_pb2, service_pb2
from xsell.type.v1 import channel_pb2

log = structlog.get_logger(__name__)

LIST_PAGE_DEFAULT, LIST_PAGE_MAX = 100, 1000


def suppression_proto(row: store.SuppressionRow) -> resources_pb2.Suppression:
    suppression = resources_pb2.Suppression(
        profile_id=row.profile_id,
        channel=suppressions.channel_number(row.channel),  # type: ignore[arg-type]
        reason=suppressions.reason_number(row.reason),  # type: ignore[arg-type]
        note=row.note,
        create_time=timestamp(row.create_time),
    )
    if row.expire_time is not None:
        suppression.expire_time.CopyFrom(timestamp(row.expire_time))
    return suppression


def domain_suppression(row: store.SuppressionRow) -> suppressions.Suppression:
    return suppressions.Suppression(row.profile_id, row.channel, row.reason, row.expire_time, row.note)


def _profile_id(profile_id: str, *, required: bool) -> str:
    if required and not profile_id:
        raise InvalidArgument("profile_id is required: the institution's id of the person", field="profile_id")
    if len(profile_id) > suppressions.MAX_PROFILE_ID:
        raise InvalidArgument(
            f"profile_id must be at most {suppressions.MAX_PROFILE_ID} characters", field="profile_id"
        )
    return profile_id


def _channel(channel: int) -> str:
    try:
        return suppressions.channel_key(channel)
    except suppressions.UnknownChannel:
        raise InvalidArgument(
            f"unknown channel {channel}; use CHANNEL_UNSPECIFIED for every channel, or one channel", field="channel"
        ) from None


class SuppressionsApi:
    """The suppressions RPCs of SegmentsApi; state lives on the SegmentsApi instance."""

    db: Database
    idempotency: Idempotency
    tracer: trace.Tracer
    consent_attributes: dict[str, str]
    address_attributes: dict[str, str]

    async def AddSuppressions(
        self, request: service_pb2.AddSuppressionsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.AddSuppressionsResponse:
        check_batch(len(request.suppressions), "suppressions")
        now = utcnow()
        accepted, problems = suppressions.validate(request.suppressions, now)
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "AddSuppressions", request, service_pb2.AddSuppressionsResponse
            )
            if previous is not None:
                return previous
            await store.upsert_suppressions(
                session,
                [
                    {
                        "profile_id": s.profile_id,
                        "channel": s.channel,
                        "reason": s.reason,
                        "expire_time": s.expire_time,
                        "note": s.note,
                    }
                    for s in accepted
                ],
                now,
            )
            response = service_pb2.AddSuppressionsResponse(
                accepted_count=len(request.suppressions) - len(problems), errors=record_errors(problems)
            )
            await self.idempotency.remember(session, "AddSuppressions", request, response)
        log.info("suppressions_added", accepted=response.accepted_count, rejected=len(problems))
        return response

    async def RemoveSuppression(
        self, request: service_pb2.RemoveSuppressionRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RemoveSuppressionResponse:
        profile_id = _profile_id(request.profile_id, required=True)
        channel = _channel(request.channel)
        if request.reason == resources_pb2.SUPPRESSION_REASON_UNSPECIFIED or request.reason not in (
            resources_pb2.SuppressionReason.values()
        ):
            raise InvalidArgument("reason is required: the reason of the suppression to lift", field="reason")
        async with self.db.transaction() as session:
            previous = await self.idempotency.previous(
                session, "RemoveSuppression", request, service_pb2.RemoveSuppressionResponse
            )
            if previous is not None:
                return previous
            removed = await store.delete_suppression(
                session, profile_id, channel, suppressions.reason_key(request.reason)
            )
            response = service_pb2.RemoveSuppressionResponse(removed=removed)
            await self.idempotency.remember(session, "RemoveSuppression", request, response)
        log.info("suppression_removed", removed=removed)
        return response

    async def ListSuppressions(
        self, request: service_pb2.ListSuppressionsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListSuppressionsResponse:
        profile_id = _profile_id(request.profile_id, required=False)
        size = page_size(request.page_size, LIST_PAGE_DEFAULT, LIST_PAGE_MAX)
        token = decode_token("ListSuppressions", request.page_token, {"profile": profile_id}, "after")
        after = None
        if token is not None:
            try:
                parts = json.loads(token)
            except ValueError:
                parts = None
            if not isinstance(parts, list) or len(parts) != 3 or not all(isinstance(p, str) for p in parts):
                raise InvalidArgument(
                    "page_token is not one this service issued; pass next_page_token unchanged", field="page_token"
                )
            after = (parts[0], parts[1], parts[2])
        async with self.db.snapshot() as session:
            rows = await store.suppressions_page(session, profile_id or None, after, size + 1)
        page = rows[:size]
        next_token = ""
        if len(rows) > size:
            last = page[-1]
            next_token = encode_token(
                "ListSuppressions",
                {"profile": profile_id, "after": json.dumps([last.profile_id, last.channel, last.reason])},
            )
        return service_pb2.ListSuppressionsResponse(
            suppressions=[suppression_proto(r) for r in page], next_page_token=next_token
        )

    async def CheckSuppression(
        self, request: service_pb2.CheckSuppressionRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.CheckSuppressionResponse:
        profile_id = _profile_id(request.profile_id, required=True)
        _channel(request.channel)
        if len(request.address) > MAX_ADDRESS:
            raise InvalidArgument(
                f"address must be at most {MAX_ADDRESS} characters: the e-mail, phone number or push token the "
                "message is about to go to",
                field="address",
            )
        at = time_field(request, "at_time", utcnow())
        channel = channel_pb2.Channel.Name(request.channel).removeprefix("CHANNEL_")
        consent = self.consent_attributes.get(channel)
        address = self.address_attributes.get(channel) if request.address.strip() else None
        names = [name for name in (consent, address) if name]
        async with self.db.snapshot() as session:
            stored = await store.suppressions_of(session, profile_id)
            given = (await store.attributes_of(session, [profile_id], names)).get(profile_id, {}) if names else {}
        by_key = {(r.channel, r.reason): r for r in stored}
        forbidding = suppressions.in_force([domain_suppression(r) for r in stored], request.channel, at)
        response = service_pb2.CheckSuppressionResponse(
            suppressed=bool(forbidding),
            suppressions=[suppression_proto(by_key[(s.channel, s.reason)]) for s in forbidding],
        )
        if consent and given.get(consent) != Value.boolean(True):
            response.consent_missing = f"{consent} is not true" if consent in given else f"no {consent} attribute"
        if address and suppressions.replaced_address(request.address, given.get(address)):
            # The message was made for an address the CRM has since replaced: it would reach whoever has the old one.
            response.address_replaced = f"the person's {address} has been replaced since the message was made"
        return response
