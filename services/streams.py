"""Every JetStream stream, subject, durable and dead-letter name in xsell, in one place."""

from plumbing.bus import ConsumerSpec, StreamSpec

# Subjects: xsell.<service>.<event>; payloads are the protobuf event messages of that service.
SEGMENT_PUBLISHED = "xsell.segments.segment_published"
MEMBERSHIP_CHANGED = "xsell.segments.membership_changed"
OUTREACH_CREATED = "xsell.campaigns.outreach_created"
DISPATCH_REQUESTED = "xsell.campaigns.dispatch_requested"
DELIVERY_UPDATED = "xsell.channels.delivery_updated"
ENGAGEMENT_RECORDED = "xsell.channels.engagement_recorded"
CONVERSION_RECORDED = "xsell.attribution.conversion_recorded"

DEAD_LETTER_PREFIX = "xsell.dlq"

# One stream per publishing service, plus the dead-letter stream.
SEGMENTS_STREAM = StreamSpec("XSELL_SEGMENTS", ("xsell.segments.>",))
CAMPAIGNS_STREAM = StreamSpec("XSELL_CAMPAIGNS", ("xsell.campaigns.>",))
CHANNELS_STREAM = StreamSpec("XSELL_CHANNELS", ("xsell.channels.>",))
ATTRIBUTION_STREAM = StreamSpec("XSELL_ATTRIBUTION", ("xsell.attribution.>",))
# Dead letters are kept a month so an operator can inspect and replay them.
DEAD_LETTER_STREAM = StreamSpec("XSELL_DLQ", (f"{DEAD_LETTER_PREFIX}.>",), max_age_seconds=30 * 24 * 3600.0)

ALL_STREAMS = (SEGMENTS_STREAM, CAMPAIGNS_STREAM, CHANNELS_STREAM, ATTRIBUTION_STREAM, DEAD_LETTER_STREAM)


def _consumer(stream: StreamSpec, durable: str, subject: str, **overrides: object) -> ConsumerSpec:
    return ConsumerSpec(
        stream=stream.name,
        durable=durable,
        filter_subject=subject,
        dead_letter_subject=f"{DEAD_LETTER_PREFIX}.{durable}",
        **overrides,  # type: ignore[arg-type]
    )


# Durable consumers, named <service>-<what it applies>.
CHANNELS_DISPATCH = _consumer(CAMPAIGNS_STREAM, "channels-dispatch", DISPATCH_REQUESTED)
ATTRIBUTION_OUTREACH = _consumer(CAMPAIGNS_STREAM, "attribution-outreach", OUTREACH_CREATED)
ATTRIBUTION_DELIVERY = _consumer(CHANNELS_STREAM, "attribution-delivery", DELIVERY_UPDATED)
ATTRIBUTION_ENGAGEMENT = _consumer(CHANNELS_STREAM, "attribution-engagement", ENGAGEMENT_RECORDED)
# Segments records engagement and conversions on the person's profile (email_opened, converted...),
# so audiences can use them: "did not click in 30 days", "not converted yet".
SEGMENTS_ENGAGEMENT = _consumer(CHANNELS_STREAM, "segments-engagement", ENGAGEMENT_RECORDED)
SEGMENTS_CONVERSION = _consumer(ATTRIBUTION_STREAM, "segments-conversion", CONVERSION_RECORDED)
