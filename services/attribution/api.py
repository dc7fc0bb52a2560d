"""The AttributionService gRPC servicer: leads and LOS events in, attributed revenue, cost and ROMI out."""

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from opentelemetry import trace
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from plumbing.db import Database
from plumbing.errors import Aborted, AlreadyExists, DomainError, InvalidArgument, enum_name
from plumbing.group_commit import ALONE, Alone, GroupCommit, Submitted
from plumbing.idempotency import Idempotency, scope_in
from plumbing.outbox import Outbox
from plumbing.page_tokens import decode_token, encode_token, page_size
from plumbing.telemetry import outreach_span
from plumbing.times import time_field
from services import streams
from services.attribution import reporting, rules, store, views
from services.attribution.convert import (
    channel_name,
    channel_value,
    conversion_kind_name,
    conversion_kind_value,
    linkage_value,
    money,
    origin_name,
    origin_value,
    stage_value,
    timestamp,
)
from services.attribution.ledger import Ledger, disbursement_money
from services.attribution.revenue import Revenue, RevenueModels, romi
from xsell.attribution.v1 import events_pb2, resources_pb2, service_pb2, service_pb2_grpc
from xsell.type.v1 import channel_pb2

log = structlog.get_logger(__name__)
LEADS_PAGE_DEFAULT, LEADS_PAGE_MAX = 100, 1000
PROFILE_PAGE_DEFAULT, PROFILE_PAGE_MAX = 20, 100

R = TypeVar("R", bound=Message)
DisbursementCall = tuple[service_pb2.RecordDisbursementRequest, datetime]
DisbursementOutcome = service_pb2.RecordDisbursementResponse | Alone | BaseException


class _Conflict(Aborted):
    """A unique key of this transaction was taken by a concurrent request that committed first."""


def first_answer_on_race(
    method: str, response_type: type[R]
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """A mutating RPC whose concurrent duplicate (same request_id) lost the race answers with the winner's response.

    The loser's transaction rolled back on the unique key; if the winner stored an answer for this request_id,
    that is the answer. Otherwise the conflict was with a different request and stays ABORTED (retry).
    """

    def wrap(rpc: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(rpc)
        async def handler(self: "AttributionApi", request: Message, context: grpc.aio.ServicerContext) -> R:
            try:
                return await rpc(self, request, context)
            except _Conflict:
                async with self.db.transaction() as session:
                    previous = await self.idempotency.previous(session, method, request, response_type)
                if previous is None:
                    raise
                log.info("rpc_duplicate_answered", method=method)
                return previous

        return handler

    return wrap


class AttributionApi(service_pb2_grpc.AttributionServiceServicer):
    """Validates each request, applies it in one transaction with its request_id, and answers from the ledger."""

    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        idempotency: Idempotency,
        ledger: Ledger,
        revenue_models: RevenueModels,
        tracer: trace.Tracer,
        *,
        last_touch_windows: Mapping[str, int],
        future_skew: timedelta,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.idempotency = idempotency
        self.ledger = ledger
        self.revenue_models = revenue_models
        # Days before a conversion without a campaign ID in which the person's latest outreach is its last touch, per
        # product (AttributionSettings.last_touch_window_days, whose default is the one default).
        self.last_touch_windows = dict(last_touch_windows)
        # How far ahead of this clock a reported time may be (AttributionSettings.future_skew_seconds).
        self.future_skew = future_skew
        self.currency = ledger.currency
        self.tracer = tracer
        # Concurrent disbursements share transactions (run by the composition root as a background task).
        self.disbursements: GroupCommit[DisbursementCall, service_pb2.RecordDisbursementResponse] = GroupCommit(
            "attribution.record_disbursements",
            self._record_disbursements,
            alone=self._record_disbursement_call_alone,
            tracer=tracer,
        )

    def _reported_time(self, request: Message, field: str) -> datetime:
        """When the caller says its event happened (now when unset); INVALID_ARGUMENT when that is later than now and
        the clock skew allow: a disbursement dated years ahead was booked, into its views' days and lag."""
        now = datetime.now(UTC)
        at = time_field(request, field, now)
        rules.check_not_in_future(at, now, self.future_skew, field)
        return at

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        """One transaction; a unique-key race with a concurrent request becomes ABORTED, which callers retry."""
        try:
            async with self.db.transaction() as session:
                yield session
        except IntegrityError as error:
            log.info("rpc_conflict", error=type(error.orig).__name__)
            raise _Conflict("a concurrent request changed the same record; retry with the same request_id") from error

    async def _previous_or_locked(
        self, session: AsyncSession, method: str, request: Message, response_type: type[R], campaign_id: str
    ) -> R | store.LockedOutreach:
        """The answer this request_id already got, or else the request's outreach locked with its funnel (NOT_FOUND
        when the ledger has no such outreach): the opening of every call that writes to one outreach.

        The outreach's row lock comes before any other (a loan's), as every writer of an outreach takes them.
        """
        previous = await self.idempotency.previous(session, method, request, response_type)
        if previous is not None:
            return previous
        locked = await store.lock_outreach(session, campaign_id)
        if locked is None:
            raise rules.unknown_outreach(campaign_id)
        return locked

    @first_answer_on_race("CreateLead", service_pb2.CreateLeadResponse)
    async def CreateLead(
        self, request: service_pb2.CreateLeadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.CreateLeadResponse:
        rules.require_campaign_id(request.campaign_id)
        rules.check_id(request.crm_lead_id, "crm_lead_id")
        try:
            origin = origin_name(request.origin)
        except ValueError as error:
            raise InvalidArgument(
                f"origin {request.origin} is not a LeadOrigin; use CRM, REPLY or SUPPORT_AGENT", field="origin"
            ) from error
        with outreach_span(self.tracer, "attribution.create_lead", request.campaign_id):
            async with self._transaction() as session:
                opened = await self._previous_or_locked(
                    session, "CreateLead", request, service_pb2.CreateLeadResponse, request.campaign_id
                )
                if not isinstance(opened, store.LockedOutreach):
                    return opened
                lead, created = await self.ledger.record_lead(
                    session,
                    locked=opened,
                    campaign_id=request.campaign_id,
                    crm_lead_id=request.crm_lead_id,
                    origin=origin,
                    at=datetime.now(UTC),
                )
                if not created and lead.campaign_id != request.campaign_id:
                    raise AlreadyExists(
                        f"crm_lead_id {request.crm_lead_id!r} is already a lead of campaign_id {lead.campaign_id!r}",
                        field="crm_lead_id",
                    )
                response = service_pb2.CreateLeadResponse(lead=_lead(lead))
                await self.idempotency.remember(session, "CreateLead", request, response)
            log.info("lead_created" if created else "lead_already_known", origin=origin)
            return response

    @first_answer_on_race("RecordApplication", service_pb2.RecordApplicationResponse)
    async def RecordApplication(
        self, request: service_pb2.RecordApplicationRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordApplicationResponse:
        rules.require_id(request.loan_number, "loan_number", "LA-2025-0001")
        rules.require_campaign_id(request.campaign_id)
        rules.check_id(request.product_code, "product_code")
        applied_at = self._reported_time(request, "apply_time")
        with outreach_span(self.tracer, "attribution.record_application", request.campaign_id):
            async with self._transaction() as session:
                locked = await self._previous_or_locked(
                    session, "RecordApplication", request, service_pb2.RecordApplicationResponse, request.campaign_id
                )
                if not isinstance(locked, store.LockedOutreach):
                    return locked
                outreach = locked.outreach
                loan = await store.get_loan(session, request.loan_number)
                rules.check_application(
                    request.loan_number, loan.campaign_id if loan is not None else None, request.campaign_id
                )
                if loan is None:
                    # As a disbursement's: an application from before the outreach was not its doing, and its funnel
                    # step would carry a negative lag from send.
                    rules.check_not_before_outreach(
                        request.campaign_id, outreach.created_at, applied_at, field="apply_time"
                    )
                    loan = store.Loan(
                        loan_number=request.loan_number,
                        campaign_id=request.campaign_id,
                        product_code=request.product_code or outreach.product_code,
                        stage=rules.APPLIED,
                        currency_code=self.currency,
                        sanctioned_paise=None,
                        disbursed_paise=0,
                        applied_at=applied_at,
                        sanctioned_at=None,
                    )
                    await store.add_loan(session, loan)
                    await self.ledger.reach_step(
                        session, locked, rules.APPLIED, applied_at, measure_since_outreach=True
                    )
                response = service_pb2.RecordApplicationResponse(loan=_loan(loan))
                await self.idempotency.remember(session, "RecordApplication", request, response)
            log.info("application_recorded")
            return response

    @first_answer_on_race("RecordSanction", service_pb2.RecordSanctionResponse)
    async def RecordSanction(
        self, request: service_pb2.RecordSanctionRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordSanctionResponse:
        rules.require_id(request.loan_number, "loan_number", "LA-2025-0001")
        rules.require_campaign_id(request.campaign_id)
        rules.check_amount(request.amount.minor_units, request.amount.currency_code, self.currency)
        sanctioned_at = self._reported_time(request, "sanction_time")
        with outreach_span(self.tracer, "attribution.record_sanction", request.campaign_id):
            async with self._transaction() as session:
                locked = await self._previous_or_locked(
                    session, "RecordSanction", request, service_pb2.RecordSanctionResponse, request.campaign_id
                )
                if not isinstance(locked, store.LockedOutreach):
                    return locked
                loan = await store.get_loan(session, request.loan_number)
                rules.check_sanction(request.loan_number, loan.stage if loan is not None else None)
                assert loan is not None
                rules.check_same_campaign(request.loan_number, loan.campaign_id, request.campaign_id)
                rules.check_not_before_outreach(
                    request.campaign_id, locked.outreach.created_at, sanctioned_at, field="sanction_time"
                )
                await store.sanction_loan(session, request.loan_number, request.amount.minor_units, sanctioned_at)
                await self.ledger.reach_step(session, locked, rules.SANCTIONED, sanctioned_at)
                sanctioned = await store.get_loan(session, request.loan_number)
                assert sanctioned is not None
                response = service_pb2.RecordSanctionResponse(loan=_loan(sanctioned))
                await self.idempotency.remember(session, "RecordSanction", request, response)
            log.info("sanction_recorded", amount_paise=request.amount.minor_units)
            return response

    @first_answer_on_race("RecordDisbursement", service_pb2.RecordDisbursementResponse)
    async def RecordDisbursement(
        self, request: service_pb2.RecordDisbursementRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordDisbursementResponse:
        rules.check_amount(request.amount.minor_units, request.amount.currency_code, self.currency)
        rules.require_id(request.disbursement_id, "disbursement_id", "DISB-2025-0001-1")
        rules.require_id(request.loan_number, "loan_number", "LA-2025-0001")
        rules.require_campaign_id(request.campaign_id)
        disbursed_at = self._reported_time(request, "disburse_time")
        with outreach_span(self.tracer, "attribution.record_disbursement", request.campaign_id):
            return await self.disbursements.submit((request, disbursed_at))

    async def _record_disbursement_call_alone(self, call: DisbursementCall) -> service_pb2.RecordDisbursementResponse:
        return await self._record_disbursement_alone(*call)

    async def _record_disbursement_alone(
        self, request: service_pb2.RecordDisbursementRequest, disbursed_at: datetime
    ) -> service_pb2.RecordDisbursementResponse:
        """One disbursement in its own transaction: for calls a batch leaves out, and for a batch that failed."""
        amount = request.amount.minor_units
        async with self._transaction() as session:
            # Locked first, with its funnel: the funnel and the views move one event of an outreach at a time.
            locked = await self._previous_or_locked(
                session, "RecordDisbursement", request, service_pb2.RecordDisbursementResponse, request.campaign_id
            )
            if not isinstance(locked, store.LockedOutreach):
                return locked
            outreach = locked.outreach
            loan_product = await store.disburse_loan(
                session, request.loan_number, request.campaign_id, amount, disbursed_at
            )
            if loan_product is None:
                # The update found no sanctioned loan of this campaign ID: read the loan only to say why.
                loan = await store.get_loan(session, request.loan_number)
                rules.check_disbursement(request.loan_number, loan.stage if loan is not None else None)
                assert loan is not None
                rules.check_same_campaign(request.loan_number, loan.campaign_id, request.campaign_id)
                raise AssertionError(f"loan {request.loan_number} is sanctioned under this campaign_id")
            rules.check_not_before_outreach(
                request.campaign_id, outreach.created_at, disbursed_at, field="disburse_time"
            )
            model_name, model = self.revenue_models.for_products(loan_product, outreach.product_code)
            revenue = model.price(amount)
            recorded = await store.add_disbursement(
                session,
                disbursement_id=request.disbursement_id,
                loan_number=request.loan_number,
                campaign_id=request.campaign_id,
                amount_paise=amount,
                currency=self.currency,
                disbursed_at=disbursed_at,
                lifetime_revenue_paise=revenue.lifetime_paise,
                year1_revenue_paise=revenue.year1_paise,
                revenue_model=model_name,
                recorded_at=datetime.now(UTC),
            )
            if not recorded:
                # Raised inside the transaction, so it rolls back and nothing is written.
                raise rules.already_recorded("disbursement_id", request.disbursement_id)
            await self._book_money(
                session,
                locked,
                disbursed_at,
                amount,
                revenue,
                self._conversion_event(
                    outreach,
                    amount,
                    revenue,
                    disbursed_at,
                    product_code=loan_product or outreach.product_code,
                    loan_number=request.loan_number,
                ),
            )
            attribution = await store.attribution(session, request.campaign_id, outreach)
            assert attribution is not None
            response = service_pb2.RecordDisbursementResponse(attribution=self._attribution(attribution))
            await self.idempotency.remember(session, "RecordDisbursement", request, response)
        log.info(
            "disbursement_attributed",
            amount_paise=amount,
            lifetime_revenue_paise=revenue.lifetime_paise,
            revenue_model=model_name,
            batch_size=1,
        )
        return response

    async def _record_disbursements(self, batch: Sequence[Submitted[DisbursementCall]]) -> list[DisbursementOutcome]:
        """Applies a batch of RecordDisbursement calls in one transaction of set-based statements.

        Each call gets what it would get alone: its answer, its error (nothing of it written), or ALONE, to be
        applied on its own after this batch commits. That is the lot of a call whose request_id, outreach, loan
        or disbursement_id an earlier call of the batch already has, so that it sees that call's effect; and when
        the transaction fails as a whole (a race with another replica), group commit applies every call of a
        larger batch alone, so each gets its own answer or error.
        """
        async with self._transaction() as session:
            outcomes = await self._apply_disbursements(session, batch)
        return [outcomes.get(index, ALONE) for index in range(len(batch))]

    async def _apply_disbursements(
        self, session: AsyncSession, batch: Sequence[Submitted[DisbursementCall]]
    ) -> dict[int, DisbursementOutcome]:
        outcomes: dict[int, DisbursementOutcome] = {}
        taken: set[tuple[str, str]] = set()
        chosen: list[int] = []
        scopes = [scope_in(call.context) for call in batch]
        for index, call in enumerate(batch):
            request = call.item[0]
            keys = {
                ("request", f"{scopes[index]} {request.request_id}"),
                ("outreach", request.campaign_id),
                ("loan", request.loan_number),
                ("disbursement", request.disbursement_id),
            }
            if not request.request_id or len(request.request_id) > 200 or keys & taken:
                outcomes[index] = ALONE
                continue
            taken |= keys
            chosen.append(index)
        requests = {index: batch[index].item[0] for index in chosen}
        answered_before = await self.idempotency.previous_many(
            session,
            "RecordDisbursement",
            [(scopes[index], request) for index, request in requests.items()],
            service_pb2.RecordDisbursementResponse,
        )
        todo = []
        for index, request in requests.items():
            if (scopes[index], request.request_id) in answered_before:
                outcomes[index] = answered_before[scopes[index], request.request_id]
            else:
                todo.append(index)
        locked = await store.lock_outreaches(session, {requests[index].campaign_id for index in todo})
        loans = await store.get_loans(session, {requests[index].loan_number for index in todo})
        recorded = await store.recorded_disbursements(session, {requests[index].disbursement_id for index in todo})

        rows: list[dict[str, object]] = []
        steps: list[dict[str, object]] = []
        rollup_changes = []
        events = []
        done: list[tuple[int, str, Revenue]] = []
        for index in todo:
            request, disbursed_at = batch[index].item
            try:
                outreach_funnel, loan = self._check_disbursement(request, disbursed_at, locked, loans, recorded)
            except DomainError as error:
                outcomes[index] = error
                continue
            outreach = outreach_funnel.outreach
            amount = request.amount.minor_units
            model_name, model = self.revenue_models.for_products(loan.product_code, outreach.product_code)
            revenue = model.price(amount)
            rows.append(
                {
                    "disbursement_id": request.disbursement_id,
                    "loan_number": request.loan_number,
                    "campaign_id": request.campaign_id,
                    "amount_paise": amount,
                    "currency_code": self.currency,
                    "disbursed_at": disbursed_at,
                    "lifetime_revenue_paise": revenue.lifetime_paise,
                    "year1_revenue_paise": revenue.year1_paise,
                    "revenue_model": model_name,
                    "recorded_at": datetime.now(UTC),
                }
            )
            changed, deltas = self.ledger.plan_step(
                session, outreach_funnel, rules.DISBURSED, disbursed_at, measure_since_outreach=True
            )
            if changed:
                steps.append({"campaign_id": request.campaign_id, "step": rules.DISBURSED, "first_at": disbursed_at})
            money_deltas = disbursement_money(amount, revenue.lifetime_paise, revenue.year1_paise)
            rollup_changes.append((outreach, [*deltas, (disbursed_at, money_deltas)]))
            self.ledger.metrics.disbursed(session, amount, self.currency)
            conversion = self._conversion_event(
                outreach,
                amount,
                revenue,
                disbursed_at,
                product_code=loan.product_code or outreach.product_code,
                loan_number=request.loan_number,
            )
            # Built in the call's own context, so the event continues the call's trace.
            events.append(
                batch[index].context.run(
                    self.outbox.event, streams.CONVERSION_RECORDED, conversion, campaign_id=request.campaign_id
                )
            )
            done.append((index, model_name, revenue))

        await store.add_disbursements(session, rows)
        await store.reach_steps(session, steps)
        await self.ledger.rollup.apply_many(session, rollup_changes)
        await self.outbox.add_rows(session, events)
        attributions = await store.attributions(
            session, {requests[index].campaign_id: locked[requests[index].campaign_id].outreach for index, _, _ in done}
        )
        remembered = []
        for index, model_name, revenue in done:
            request = requests[index]
            response = service_pb2.RecordDisbursementResponse(
                attribution=self._attribution(attributions[request.campaign_id])
            )
            outcomes[index] = response
            remembered.append((scopes[index], request, response))
            batch[index].context.run(
                log.info,
                "disbursement_attributed",
                amount_paise=request.amount.minor_units,
                lifetime_revenue_paise=revenue.lifetime_paise,
                revenue_model=model_name,
                batch_size=len(batch),
            )
        await self.idempotency.remember_many(session, "RecordDisbursement", remembered)
        return outcomes

    @staticmethod
    def _check_disbursement(
        request: service_pb2.RecordDisbursementRequest,
        disbursed_at: datetime,
        locked: dict[str, store.LockedOutreach],
        loans: dict[str, store.Loan],
        recorded: set[str],
    ) -> tuple[store.LockedOutreach, store.Loan]:
        """The checks of _record_disbursement_alone, in its order, against what the batch read."""
        outreach_funnel = locked.get(request.campaign_id)
        if outreach_funnel is None:
            raise rules.unknown_outreach(request.campaign_id)
        loan = loans.get(request.loan_number)
        rules.check_disbursement(request.loan_number, loan.stage if loan is not None else None)
        assert loan is not None
        rules.check_same_campaign(request.loan_number, loan.campaign_id, request.campaign_id)
        rules.check_not_before_outreach(
            request.campaign_id, outreach_funnel.outreach.created_at, disbursed_at, field="disburse_time"
        )
        if request.disbursement_id in recorded:
            raise rules.already_recorded("disbursement_id", request.disbursement_id)
        return outreach_funnel, loan

    async def ListLeads(
        self, request: service_pb2.ListLeadsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListLeadsResponse:
        size = page_size(request.page_size, LEADS_PAGE_DEFAULT, LEADS_PAGE_MAX)
        awaiting = "true" if request.awaiting_crm_lead_id else "false"
        after = decode_token("ListLeads", request.page_token, {"awaiting_crm_lead_id": awaiting}, "after")
        async with self.db.snapshot() as session:
            # One more than the page: whether another page follows.
            listed = await store.list_leads(session, awaiting=request.awaiting_crm_lead_id, after=after, limit=size + 1)
        page = listed[:size]
        response = service_pb2.ListLeadsResponse(
            leads=[
                service_pb2.ListedLead(
                    lead=_lead(item.lead),
                    profile_id=item.profile_id,
                    product_code=item.product_code,
                    campaign_key=item.campaign_key,
                )
                for item in page
            ]
        )
        if len(listed) > size:
            response.next_page_token = encode_token(
                "ListLeads", {"awaiting_crm_lead_id": awaiting, "after": page[-1].lead.lead_id}
            )
        trace.get_current_span().set_attribute("attribution.leads.listed", len(page))
        return response

    async def ListProfileOutreaches(
        self, request: service_pb2.ListProfileOutreachesRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ListProfileOutreachesResponse:
        rules.require_id(request.profile_id, "profile_id", "prf_kaveri")
        size = page_size(request.page_size, PROFILE_PAGE_DEFAULT, PROFILE_PAGE_MAX)
        before = _outreach_keyset(
            decode_token("ListProfileOutreaches", request.page_token, {"profile_id": request.profile_id}, "before")
        )
        async with self.db.snapshot() as session:
            found = await store.outreaches_of_profile(session, request.profile_id, before=before, limit=size + 1)
            page = found[:size]
            attributions = await store.attributions(session, {o.campaign_id: o for o in page})
        response = service_pb2.ListProfileOutreachesResponse(
            outreaches=[self._attribution(attributions[o.campaign_id]) for o in page]
        )
        if len(found) > size:
            last = page[-1]
            response.next_page_token = encode_token(
                "ListProfileOutreaches",
                {"profile_id": request.profile_id, "before": f"{last.created_at.isoformat()} {last.campaign_id}"},
            )
        trace.get_current_span().set_attribute("attribution.outreaches.listed", len(page))
        return response

    async def GetCampaignAttribution(
        self, request: service_pb2.GetCampaignAttributionRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetCampaignAttributionResponse:
        rules.require_campaign_id(request.campaign_id)
        with outreach_span(self.tracer, "attribution.get_campaign_attribution", request.campaign_id):
            async with self.db.snapshot() as session:
                attribution = await store.attribution(session, request.campaign_id)
                withdrawn = None if attribution else await store.withdrawn_at(session, request.campaign_id)
            if withdrawn is not None:
                raise rules.withdrawn_outreach(request.campaign_id, withdrawn)
            if attribution is None:
                raise rules.unknown_outreach(request.campaign_id)
            return service_pb2.GetCampaignAttributionResponse(attribution=self._attribution(attribution))

    async def GetAttributionReport(
        self, request: service_pb2.GetAttributionReportRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetAttributionReportResponse:
        report_filter = _report_filter(request.filter)
        dimension = _DIMENSIONS.get(request.dimension)
        if dimension is None:
            raise InvalidArgument(f"dimension {request.dimension} is not a ReportDimension", field="dimension")
        with self.tracer.start_as_current_span("attribution.get_report") as span:
            span.set_attribute("report.dimension", dimension)
            async with self.db.snapshot() as session:
                result = await views.report(session, report_filter, dimension)
            rows = sorted(result.rows.items(), key=lambda item: (-item[1].counters["lifetime_paise"], item[0]))
            total = reporting.figures(result.total)
            return service_pb2.GetAttributionReportResponse(
                total=self._figures(total),
                rows=[resources_pb2.ReportRow(key=key, figures=self._figures(reporting.figures(t))) for key, t in rows],
                trend=[
                    resources_pb2.TrendPoint(date=day, figures=self._figures(reporting.figures(t)))
                    for day, t in result.trend.items()
                ],
                lag=[
                    resources_pb2.LagBucket(min_days=low, max_days=high, conversions=count)
                    for (low, high), count in zip(reporting.lag_bounds(), total.lag, strict=True)
                ],
                utc_offset=reporting.format_offset(self.ledger.rollup.utc_offset_minutes),
            )

    async def GetLift(
        self, request: service_pb2.GetLiftRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetLiftResponse:
        report_filter = _report_filter(request.filter)
        confidence = request.confidence or 0.95
        if not 0 < confidence < 1:
            raise InvalidArgument(
                f"confidence must be between 0 and 1, e.g. 0.95; got {confidence}", field="confidence"
            )
        with self.tracer.start_as_current_span("attribution.get_lift"):
            async with self.db.snapshot() as session:
                counts = await views.lift_counts(session, report_filter, self.ledger.rollup.utc_offset_minutes)
        result = reporting.lift(
            counts.treated, counts.treated_conversions, counts.held_out, counts.held_out_conversions, confidence
        )
        return service_pb2.GetLiftResponse(
            lift=resources_pb2.Lift(
                treated=result.treated,
                treated_conversions=result.treated_conversions,
                treated_rate=result.treated_rate,
                held_out=result.held_out,
                held_out_conversions=result.held_out_conversions,
                held_out_rate=result.held_out_rate,
                lift=result.lift,
                lift_low=result.lift_low,
                lift_high=result.lift_high,
                confidence=result.confidence,
                conclusive=result.conclusive,
                statement=result.statement,
            )
        )

    @first_answer_on_race("RecordProfileConversion", service_pb2.RecordProfileConversionResponse)
    async def RecordProfileConversion(
        self, request: service_pb2.RecordProfileConversionRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordProfileConversionResponse:
        rules.require_id(request.conversion_id, "conversion_id", "DISB-2025-0001-1")
        rules.require_id(request.profile_id, "profile_id", "prf_kaveri")
        rules.require_id(request.product_code, "product_code", "MSME_WC_TOPUP")
        rules.check_amount(request.amount.minor_units, request.amount.currency_code, self.currency)
        occurred_at = self._reported_time(request, "occur_time")
        async with self._transaction() as session:
            previous = await self.idempotency.previous(
                session, "RecordProfileConversion", request, service_pb2.RecordProfileConversionResponse
            )
            if previous is not None:
                return previous
            if not await store.add_profile_conversion(
                session,
                conversion_id=request.conversion_id,
                profile_id=request.profile_id,
                product_code=request.product_code,
                amount_paise=request.amount.minor_units,
                currency=self.currency,
                occurred_at=occurred_at,
                recorded_at=datetime.now(UTC),
            ):
                raise rules.already_recorded("conversion_id", request.conversion_id)
            response = service_pb2.RecordProfileConversionResponse(conversion_id=request.conversion_id)
            await self.idempotency.remember(session, "RecordProfileConversion", request, response)
        log.info("profile_conversion_recorded", amount_paise=request.amount.minor_units)
        return response

    @first_answer_on_race("RecordConversion", service_pb2.RecordConversionResponse)
    async def RecordConversion(
        self, request: service_pb2.RecordConversionRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordConversionResponse:
        rules.require_id(request.conversion_id, "conversion_id", "MF-ORD-2025-0001")
        try:
            kind = conversion_kind_name(request.kind)
        except ValueError:
            kind = ""
        if kind not in rules.CONVERSION_KINDS:
            raise InvalidArgument(
                f"kind {request.kind} is not a ConversionKind; use e.g. LUMPSUM_INVESTED, SIP_REGISTERED, "
                "ACCOUNT_FUNDED or FIRST_TRANSACTION",
                field="kind",
            )
        if request.campaign_id:
            rules.require_campaign_id(request.campaign_id)
        else:
            # Without a campaign ID, the person and the product find the last touch and its window.
            rules.require_id(request.profile_id, "profile_id", "prf_kaveri")
            rules.require_id(request.product_code, "product_code", "MF_LUMPSUM")
        for field in ("profile_id", "product_code"):
            rules.check_id(getattr(request, field), field)
        rules.check_amount(request.amount.minor_units, request.amount.currency_code, self.currency)
        occurred_at = self._reported_time(request, "occur_time")
        # Named by the caller: the outreach's trace from the start. Found by last touch: the look-up is the call's own
        # span, and what is recorded for the outreach found (its funnel step, ConversionRecorded) is in its trace.
        with self._conversion_span(request.campaign_id, "attribution.record_conversion"):
            async with self._transaction() as session:
                opened = await self._open_conversion(session, request, kind, occurred_at)
                if isinstance(opened, service_pb2.RecordConversionResponse):
                    return opened
                locked, linkage = opened
                touched = locked.outreach.campaign_id if locked is not None and not request.campaign_id else ""
                with self._conversion_span(touched, "attribution.record_last_touch_conversion", only_outreach=True):
                    response = await self._record_conversion(session, request, kind, occurred_at, locked, linkage)
                await self.idempotency.remember(session, "RecordConversion", request, response)
        conversion = response.conversion
        log.info(
            "conversion_recorded",
            kind=kind,
            linkage=linkage,
            amount_paise=request.amount.minor_units,
            lifetime_revenue_paise=conversion.lifetime_revenue.minor_units,
        )
        return response

    def _conversion_span(
        self, campaign_id: str, name: str, *, only_outreach: bool = False
    ) -> AbstractContextManager[object]:
        """The outreach's span when there is a campaign ID; otherwise a span of the call's own trace (or, with
        `only_outreach`, none). Never outreach_span with "": every unnamed conversion would share one made-up trace."""
        if campaign_id:
            return outreach_span(self.tracer, name, campaign_id)
        return nullcontext() if only_outreach else self.tracer.start_as_current_span(name)

    async def _open_conversion(
        self, session: AsyncSession, request: service_pb2.RecordConversionRequest, kind: str, at: datetime
    ) -> service_pb2.RecordConversionResponse | tuple[store.LockedOutreach | None, str]:
        """The previous answer to this request_id, or the outreach the conversion is linked to (locked) and how."""
        step = rules.conversion_step(kind)
        locked: store.LockedOutreach | None
        if request.campaign_id:
            opened = await self._previous_or_locked(
                session, "RecordConversion", request, service_pb2.RecordConversionResponse, request.campaign_id
            )
            if not isinstance(opened, store.LockedOutreach):
                return opened
            locked = opened
            rules.check_same_profile(request.campaign_id, locked.outreach.profile_id, request.profile_id)
            rules.check_not_before_outreach(request.campaign_id, locked.outreach.created_at, at, field="occur_time")
            linkage = rules.EXPLICIT
        else:
            previous = await self.idempotency.previous(
                session, "RecordConversion", request, service_pb2.RecordConversionResponse
            )
            if previous is not None:
                return previous
            start, end = rules.touch_window(at, rules.window_days(self.last_touch_windows, request.product_code))
            # A first transaction activates what was funded: its last touch is the latest funded outreach.
            touch = await store.last_touch(
                session, request.profile_id, start, end, converted_only=step == rules.ACTIVATED
            )
            locked = await store.lock_outreach(session, touch) if touch is not None else None
            linkage = rules.LAST_TOUCH if locked is not None else rules.UNATTRIBUTED
        if locked is not None and step == rules.ACTIVATED:
            rules.check_activation(locked.outreach.campaign_id, locked.funnel.get(rules.CONVERTED), at)
        return locked, linkage

    async def _record_conversion(
        self,
        session: AsyncSession,
        request: service_pb2.RecordConversionRequest,
        kind: str,
        at: datetime,
        locked: store.LockedOutreach | None,
        linkage: str,
    ) -> service_pb2.RecordConversionResponse:
        """Prices the conversion, writes it and, when it is attributed, its funnel step, money and event."""
        outreach = locked.outreach if locked is not None else None
        product_code = request.product_code or (outreach.product_code if outreach is not None else "")
        profile_id = request.profile_id or (outreach.profile_id if outreach is not None else "")
        amount = request.amount.minor_units
        step = rules.conversion_step(kind)
        if step == rules.ACTIVATED:
            model_name, revenue = "", Revenue(lifetime_paise=0, year1_paise=0)
        else:
            model_name, model = self.revenue_models.for_products(
                product_code, outreach.product_code if outreach is not None else ""
            )
            revenue = model.price(amount)
        recorded = await store.add_conversion(
            session,
            conversion_id=request.conversion_id,
            kind=kind,
            campaign_id=outreach.campaign_id if outreach is not None else None,
            linkage=linkage,
            profile_id=profile_id,
            product_code=product_code,
            amount_paise=amount,
            currency_code=self.currency,
            occurred_at=at,
            lifetime_revenue_paise=revenue.lifetime_paise,
            year1_revenue_paise=revenue.year1_paise,
            revenue_model=model_name,
            recorded_at=datetime.now(UTC),
        )
        # Funded conversions also count for lift, attributed or not, as RecordProfileConversion's do.
        if recorded and step == rules.CONVERTED:
            recorded = await store.add_profile_conversion(
                session,
                conversion_id=request.conversion_id,
                profile_id=profile_id,
                product_code=product_code,
                amount_paise=amount,
                currency=self.currency,
                occurred_at=at,
                recorded_at=datetime.now(UTC),
            )
        if not recorded:
            # Raised inside the transaction, so it rolls back and nothing is written.
            raise rules.already_recorded("conversion_id", request.conversion_id)
        conversion = resources_pb2.Conversion(
            conversion_id=request.conversion_id,
            kind=conversion_kind_value(kind),
            campaign_id=outreach.campaign_id if outreach is not None else "",
            linkage=linkage_value(linkage),
            profile_id=profile_id,
            product_code=product_code,
            amount=money(amount, self.currency),
            lifetime_revenue=money(revenue.lifetime_paise, self.currency),
            year1_revenue=money(revenue.year1_paise, self.currency),
            occur_time=timestamp(at),
        )
        if locked is None or outreach is None:
            return service_pb2.RecordConversionResponse(conversion=conversion)
        if step == rules.ACTIVATED:
            await self.ledger.reach_step(session, locked, rules.ACTIVATED, at, measure_since_outreach=True)
        else:
            event = self._conversion_event(
                outreach,
                amount,
                revenue,
                at,
                product_code=product_code,
                kind=conversion_kind_value(kind),
                conversion_id=request.conversion_id,
            )
            await self._book_money(session, locked, at, amount, revenue, event)
        attribution = await store.attribution(session, outreach.campaign_id, outreach)
        assert attribution is not None
        return service_pb2.RecordConversionResponse(conversion=conversion, attribution=self._attribution(attribution))

    @first_answer_on_race("RecordFixedCost", service_pb2.RecordFixedCostResponse)
    async def RecordFixedCost(
        self, request: service_pb2.RecordFixedCostRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RecordFixedCostResponse:
        rules.require_id(request.campaign_key, "campaign_key", "cmp_msme_gst")
        rules.check_amount(request.amount.minor_units, request.amount.currency_code, self.currency)
        rules.check_description(request.description)
        day = _date(request.book_date, "book_date") or self.ledger.rollup.day(datetime.now(UTC))
        async with self._transaction() as session:
            previous = await self.idempotency.previous(
                session, "RecordFixedCost", request, service_pb2.RecordFixedCostResponse
            )
            if previous is not None:
                return previous
            cost_id, outreaches = await self.ledger.record_fixed_cost(
                session,
                campaign_key=request.campaign_key,
                amount_paise=request.amount.minor_units,
                day=day,
                description=request.description,
            )
            response = service_pb2.RecordFixedCostResponse(
                cost=resources_pb2.FixedCost(
                    cost_id=cost_id,
                    campaign_key=request.campaign_key,
                    amount=money(request.amount.minor_units, self.currency),
                    book_date=day,
                    description=request.description,
                    outreaches=outreaches,
                )
            )
            await self.idempotency.remember(session, "RecordFixedCost", request, response)
        log.info("fixed_cost_booked", amount_paise=request.amount.minor_units, outreaches=outreaches)
        return response

    def _conversion_event(
        self, outreach: store.Outreach, amount: int, revenue: Revenue, at: datetime, **fields: Any
    ) -> events_pb2.ConversionRecorded:
        """The event of money attributed to the outreach: a disbursement's (with its loan number) or a conversion's
        (with its kind and id)."""
        return events_pb2.ConversionRecorded(
            campaign_id=outreach.campaign_id,
            amount=money(amount, self.currency),
            lifetime_revenue=money(revenue.lifetime_paise, self.currency),
            year1_revenue=money(revenue.year1_paise, self.currency),
            disburse_time=timestamp(at),
            profile_id=outreach.profile_id,
            **fields,
        )

    async def _book_money(
        self,
        session: AsyncSession,
        locked: store.LockedOutreach,
        at: datetime,
        amount: int,
        revenue: Revenue,
        event: events_pb2.ConversionRecorded,
    ) -> None:
        """Adds money to the locked outreach's funnel and views, counts it and publishes its event, in the caller's
        transaction (the ledger row is the caller's)."""
        await self.ledger.record_disbursement(session, locked, at, amount, revenue.lifetime_paise, revenue.year1_paise)
        self.ledger.metrics.disbursed(session, amount, self.currency)
        await self.outbox.add(session, streams.CONVERSION_RECORDED, event, campaign_id=event.campaign_id)

    def _figures(self, f: reporting.Figures) -> resources_pb2.ReportFigures:
        return resources_pb2.ReportFigures(
            sent=f.sent,
            conversions=f.conversions,
            conversion_rate=f.conversion_rate,
            disbursed_amount=money(f.disbursed_paise, self.currency),
            lifetime_revenue=money(f.lifetime_paise, self.currency),
            year1_revenue=money(f.year1_paise, self.currency),
            cost=money(f.cost_paise, self.currency),
            romi=f.romi,
            cost_per_conversion=money(f.cost_per_conversion_paise, self.currency),
            funnel=resources_pb2.Funnel(**f.funnel),
        )

    def _attribution(self, a: store.Attribution) -> resources_pb2.CampaignAttribution:
        outreach = a.outreach
        return resources_pb2.CampaignAttribution(
            campaign_id=outreach.campaign_id,
            campaign_key=outreach.campaign_key,
            trigger_code=outreach.trigger_code,
            channel=channel_value(outreach.channel),
            product_code=outreach.product_code,
            disbursed_amount=money(a.disbursed_paise, self.currency),
            lifetime_revenue=money(a.lifetime_revenue_paise, self.currency),
            year1_revenue=money(a.year1_revenue_paise, self.currency),
            cost=money(a.cost_paise, self.currency),
            romi=romi(a.lifetime_revenue_paise, a.cost_paise),
            funnel=resources_pb2.Funnel(**a.funnel),
            loans=[_loan(loan) for loan in a.loans],
            leads=[_lead(lead) for lead in a.leads],
        )


_DIMENSIONS = {
    resources_pb2.REPORT_DIMENSION_UNSPECIFIED: "trigger_code",
    resources_pb2.REPORT_DIMENSION_TRIGGER: "trigger_code",
    resources_pb2.REPORT_DIMENSION_CAMPAIGN: "campaign_key",
    resources_pb2.REPORT_DIMENSION_PROGRAMME: "programme",
    resources_pb2.REPORT_DIMENSION_LABEL: "labels_key",
    resources_pb2.REPORT_DIMENSION_CHANNEL: "channel",
    resources_pb2.REPORT_DIMENSION_PRODUCT: "product_code",
}


def _date(value: str, field: str) -> str:
    if not value:
        return ""
    try:
        # isoformat, not strftime: glibc's %Y writes year 999 as "999", which sorts after "2025" among the days.
        return datetime.strptime(value, "%Y-%m-%d").date().isoformat()
    except ValueError as error:
        raise InvalidArgument(
            f"{field} must be a day as YYYY-MM-DD, e.g. 2025-11-01; got {value!r}", field=field
        ) from error


MAX_FILTER_LABELS = 50
"""The most labels a report filter may name (a campaign carries a handful)."""
MAX_FILTER_LABEL_LENGTH = 200
"""The longest label a report filter may name, as campaigns' GetLabelReport bounds its label."""


def _report_filter(message: service_pb2.ReportFilter) -> views.ReportFilter:
    start = _date(message.start_date, "filter.start_date")
    end = _date(message.end_date, "filter.end_date")
    if start and end and start > end:
        raise InvalidArgument(f"filter.end_date {end} is before filter.start_date {start}", field="filter.end_date")
    if len(message.labels) > MAX_FILTER_LABELS:
        # Each label is a condition of the report's query: 5,000 passed SQLite's expression depth (INTERNAL).
        raise InvalidArgument(
            f"filter.labels may name at most {MAX_FILTER_LABELS} labels; got {len(message.labels)}",
            field="filter.labels",
        )
    for index, label in enumerate(message.labels):
        if len(label) > MAX_FILTER_LABEL_LENGTH or any(ord(char) < 0x20 or ord(char) == 0x7F for char in label):
            # Each label becomes a LIKE pattern: 70,000 characters were "too complex" for SQLite (INTERNAL), and a NUL
            # is refused by PostgreSQL.
            raise InvalidArgument(
                f"filter.labels[{index}] must be a campaign's label: at most {MAX_FILTER_LABEL_LENGTH} characters, "
                "without control characters",
                field=f"filter.labels[{index}]",
            )
    for field in ("trigger_code", "campaign_key", "programme", "product_code"):
        rules.check_id(getattr(message, field), f"filter.{field}")
    return views.ReportFilter(
        start_date=start,
        end_date=end,
        labels=tuple(label for label in message.labels if label),
        trigger_code=message.trigger_code,
        campaign_key=message.campaign_key,
        programme=message.programme,
        channel=_channel_filter(message.channel),
        product_code=message.product_code,
    )


def _channel_filter(channel: int) -> str:
    """The report filter's channel ("" for any); INVALID_ARGUMENT for a value no channel has (it answered INTERNAL)."""
    if not channel:
        return ""
    enum_name(channel_pb2.Channel, channel, "filter.channel")
    return channel_name(channel)  # type: ignore[arg-type]


def _loan(loan: store.Loan) -> resources_pb2.Loan:
    message = resources_pb2.Loan(
        loan_number=loan.loan_number,
        campaign_id=loan.campaign_id,
        product_code=loan.product_code,
        stage=stage_value(loan.stage),
        disbursed_amount=money(loan.disbursed_paise, loan.currency_code),
        apply_time=timestamp(loan.applied_at),
    )
    if loan.sanctioned_paise is not None:
        message.sanctioned_amount.CopyFrom(money(loan.sanctioned_paise, loan.currency_code))
    return message


def _lead(lead: store.Lead) -> resources_pb2.Lead:
    return resources_pb2.Lead(
        lead_id=lead.lead_id,
        campaign_id=lead.campaign_id,
        crm_lead_id=lead.crm_lead_id,
        origin=origin_value(lead.origin),
        create_time=timestamp(lead.created_at),
    )


def _outreach_keyset(value: str | None) -> tuple[datetime, str] | None:
    """A ListProfileOutreaches token's keyset: the creation time and campaign ID of the last outreach listed."""
    if value is None:
        return None
    at, _, campaign_id = value.partition(" ")
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or not campaign_id:
        raise InvalidArgument(
            "page_token is not one this service issued; pass next_page_token unchanged", field="page_token"
        )
    return moment, campaign_id
