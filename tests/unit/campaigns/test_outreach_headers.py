"""The headers a page writes for each outreach event are those the propagator would write in the outreach's trace."""

import json

from opentelemetry import context as otel_context
from opentelemetry import propagate

from plumbing.bus import CAMPAIGN_ID_HEADER, MSG_ID_HEADER
from plumbing.telemetry import headers_span_context, outreach_context, outreach_ids
from services.campaigns.outreach_rows import outreach_headers


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
