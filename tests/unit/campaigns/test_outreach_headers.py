"""What a page writes for each outreach event, built directly, equals what the usual way builds: the headers the
propagator would write in the outreach's trace, and the whole OutreachCreated."""

import json
from datetime import UTC, datetime
from types import SimpleNamespace

from opentelemetry import context as otel_context
from opentelemetry import propagate
from sqlalchemy.dialects import sqlite

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER
from plumbing.telemetry import headers_span_context, outreach_context, outreach_ids
from services.campaigns import store
from services.campaigns.content import ContentTemplates, compile_content
from services.campaigns.content_files import ContentLibrary
from services.campaigns.messages import timestamp
from services.campaigns.outreach_rows import OutreachRows, outreach_headers, outreach_traceparent
from services.campaigns.rendering import EmailTemplates, Money, Offer
from services.campaigns.segments_client import AudienceMember
from xsell.campaigns.v1 import events_pb2, resources_pb2
from xsell.type.v1 import channel_pb2, money_pb2


def test_an_outreach_events_headers_are_what_the_propagator_writes_inside_its_trace() -> None:
    campaign_id = "CSELL-NOV-T06-0884"
    expected = {MSG_ID_HEADER: "evt_01JD0000000000000000000000-00007"}
    token = otel_context.attach(outreach_context(campaign_id))
    try:
        propagate.inject(expected)
    finally:
        otel_context.detach(token)
    expected[CAMPAIGN_ID_HEADER] = campaign_id

    headers = json.loads(outreach_headers("evt_01JD0000000000000000000000-00007", campaign_id))

    assert headers == expected
    # The relay and consumers read it back as the outreach's root span, sampled.
    remote = headers_span_context(headers)
    assert remote is not None and (remote.trace_id, remote.span_id) == outreach_ids(campaign_id)
    assert remote.trace_flags.sampled


def test_the_traceparent_read_from_the_digest_is_the_one_outreach_ids_derives() -> None:
    for sequence in (1, 884, 99_999, 1_000_000):
        campaign_id = f"CSELL-NOV-T06-{sequence:04d}"
        trace_id, span_id = outreach_ids(campaign_id)
        assert outreach_traceparent(campaign_id) == f"00-{trace_id:032x}-{span_id:016x}-01"


def test_a_pages_outreach_created_reads_as_the_whole_message() -> None:
    now = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
    campaign = SimpleNamespace(
        campaign_key="01KCAMPAIGN",
        trigger_code="T06",
        labels=["Cross-Sell – Lumpsum", "MSME"],
        category=2,
        programme="CSELL",
        time_zone="Asia/Kolkata",
    )
    run = SimpleNamespace(run_id="run_01", month="NOV")
    content = ContentTemplates.from_stored(
        EmailTemplates("Hi {{ first_name }}", '<a href="{{ unsubscribe_url }}">x</a>', "", "Fundsy"), None
    )
    library = ContentLibrary()
    compiled = compile_content(content, ("EMAIL",), offer_has_amount=True, registry=library.registry)
    offer = Offer("LUMPSUM", Money(5_000_000, "INR"))
    session = SimpleNamespace(bind=SimpleNamespace(dialect=sqlite.dialect()))
    rows = OutreachRows(campaign, run, compiled, offer, library, store.DriverValues(session), now)  # type: ignore[arg-type]
    member = AudienceMember("p-1", {"email": "p1@example.in", "first_name": "Asha"})

    page = rows.page([member], {"p-1": "EMAIL"}, [884], first_ordinal=0)

    event_id, _, payload, _, _ = page.events[0]
    assert events_pb2.OutreachCreated.FromString(payload) == events_pb2.OutreachCreated(
        event_id=event_id,
        outreach=resources_pb2.Outreach(
            campaign_id="CSELL-NOV-T06-0884",
            campaign_key="01KCAMPAIGN",
            profile_id="p-1",
            channel=channel_pb2.CHANNEL_EMAIL,
            trigger_code="T06",
            offer=resources_pb2.Offer(
                product_code="LUMPSUM", amount=money_pb2.Money(minor_units=5_000_000, currency_code="INR")
            ),
            labels=["Cross-Sell – Lumpsum", "MSME"],
            category=2,  # type: ignore[arg-type]
            create_time=timestamp(now),
            run_id="run_01",
        ),
    )
