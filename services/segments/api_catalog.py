"""The attribute catalog and computed attributes: DefineAttributes, ListAttributes, and the default catalog file."""

import asyncio
from datetime import datetime
from pathlib import Path

import grpc
import structlog
import yaml
from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.idempotency import Idempotency
from plumbing.outbox import utcnow
from plumbing.page_tokens import decode_token, encode_token, page_size
from services.segments import store
from services.segments.activity import Activity
from services.segments.api_support import check_batch
from services.segments.catalog import Catalog, Definition, definitions_from_document, validate_definitions
from services.segments.records import record_errors
from xsell.segments.v1 import resources_pb2, service_pb2

log = structlog.get_logger(__name__)

ATTRIBUTES_PAGE_DEFAULT, ATTRIBUTES_PAGE_MAX = 200, 1000


async def define(
    db: Database, idempotency: Idempotency, activity: Activity, request: service_pb2.DefineAttributesRequest
) -> service_pb2.DefineAttributesResponse:
    """Stores the valid definitions and backfills new computed attributes from the stored events, in one transaction."""
    now = utcnow()
    async with db.transaction() as session:
        previous = await idempotency.previous(
            session, "DefineAttributes", request, service_pb2.DefineAttributesResponse
        )
        if previous is not None:
            return previous
        # Read in the transaction, not from the cache: the type check must see every committed declaration.
        declared = await store.load_catalog(session)
        accepted, problems = validate_definitions(request.attributes, declared)
        new = await store.save_definitions(session, accepted, declared, now)
        await _backfill(session, new, now)
        response = service_pb2.DefineAttributesResponse(
            accepted_count=len(request.attributes) - len(problems), errors=record_errors(problems)
        )
        await idempotency.remember(session, "DefineAttributes", request, response)
    activity.catalog.invalidate()
    log.info("attributes_defined", accepted=response.accepted_count, rejected=len(problems), new=len(new))
    return response


async def _backfill(session: AsyncSession, new: list[Definition], now: datetime) -> None:
    """A new computed attribute starts with the values of the events already stored, for everyone at once.

    Memberships are not refreshed here: a published rule on an attribute that did not exist yet is
    caught up by the next event, upsert or sweep that touches each person.
    """
    derived = [d.derived for d in new if d.derived is not None]
    if derived:
        await store.recompute(session, derived, None, now)


async def install_catalog_file(db: Database, activity: Activity, path: str) -> int:
    """Declares the attributes of a catalog file that are not declared yet; declared ones are left untouched.

    Every replica runs this at start; the first one stores the definitions and the others find them.
    Returns how many were new. An invalid file stops the start, with the entry at fault.
    """
    if not path:
        return 0
    text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
    protos = definitions_from_document(yaml.safe_load(text))
    async with db.transaction() as session:
        declared = await store.load_catalog(session)
        accepted, problems = validate_definitions(protos, Catalog())
        if problems:
            raise ValueError(f"catalog file {path}: " + "; ".join(f"{p.field}: {p.reason}" for p in problems))
        missing = [d for d in accepted if declared.get(d.name) is None]
        now = utcnow()
        new = await store.save_definitions(session, missing, declared, now)
        await _backfill(session, new, now)
    activity.catalog.invalidate()
    log.info("catalog_file_installed", declared=len(accepted), new=len(new))
    return len(new)


class CatalogApi:
    """The catalog RPCs of SegmentsApi; state lives on the SegmentsApi instance."""

    db: Database
    idempotency: Idempotency
    activity: Activity

    async def DefineAttributes(
        self, request: service_pb2.DefineAttributesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.DefineAttributesResponse:
        check_batch(len(request.attributes), "attributes")
        response = await define(self.db, self.idempotency, self.activity, request)
        span = trace.get_current_span()
        span.set_attribute("segments.batch.size", len(request.attributes))
        span.set_attribute("segments.batch.rejected", len(response.errors))
        return response

    async def ListAttributes(
        self, request: service_pb2.ListAttributesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListAttributesResponse:
        size = page_size(request.page_size, ATTRIBUTES_PAGE_DEFAULT, ATTRIBUTES_PAGE_MAX)
        after = decode_token("ListAttributes", request.page_token, {}, "after")
        async with self.db.snapshot() as session:
            rows = await store.definitions_page(session, after, size + 1)
        page: list[resources_pb2.AttributeDefinition] = rows[:size]
        token = encode_token("ListAttributes", {"after": page[-1].name}) if len(rows) > size else ""
        return service_pb2.ListAttributesResponse(attributes=page, next_page_token=token)
