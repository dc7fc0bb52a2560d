"""Every JetStream stream, subject, durable and dead-letter name in xsell, in one place."""

from plumbing.bus import ConsumerSpec, StreamSpec

# Subjects: xsell.<service>.<event>; payloads are the protobuf event messages of that service.
SEGMENT_PUBLISHED = "xsell.segments.segment_published"
MEMBERSHIP_CHANGED = "xsell.segments.membership_changed"
OUTREACH_CREATED = "xsell.campaigns.outreach_created"
DISPATCH_REQUESTED = "xsell.campaigns.dispatch_requested"
# A person held out of a run (the control group), so attribution can measure lift against them.
HOLDOUT_ASSIGNED = "xsell.campaigns.holdout_assigned"
# An undispatched outreach withdrawn for a better-ranked campaign's: attribution takes back its send.
OUTREACH_WITHDRAWN = "xsell.campaigns.outreach_withdrawn"
DELIVERY_UPDATED = "xsell.channels.delivery_updated"
# A DispatchRequested handed over again, once, by channels itself: an ambiguous hand-over its provider never
# reported (services/channels/resend.py).
DISPATCH_RESENT = "xsell.channels.dispatch_resent"
ENGAGEMENT_RECORDED = "xsell.channels.engagement_recorded"
CONVERSION_RECORDED = "xsell.attribution.conversion_recorded"
BULK_INGEST_COMPLETED = "xsell.segments.bulk_ingest_completed"
# Bulk feeds publish IngestEventsRequest batches here (request_id + events); segments answers each
# with BulkIngestCompleted.
INGEST_EVENTS = "xsell.ingest.events"
# And UpsertProfilesRequest batches here (request_id + profiles: the CRM's nightly dump), answered alike.
INGEST_PROFILES = "xsell.ingest.profiles"

DEAD_LETTER_PREFIX = "xsell.dlq"

# One stream per publishing service, plus the dead-letter stream. Each may fill its share of the JetStream store where
# NATS gives account XSELL a limit (`make run`, Kubernetes: services/nats_access.py); the shares add up to the whole,
# so a stream that fills up (a feed sending without end, a release far larger than the store was sized for) stops
# its own publishers only. Sized for what each keeps: every message for max_age (docs/deploy.md#jetstream-storage).
SEGMENTS_STREAM = StreamSpec("XSELL_SEGMENTS", ("xsell.segments.>",), store_share=0.06)
# An outreach's OutreachCreated and DispatchRequested (or HoldoutAssigned): the largest by far.
CAMPAIGNS_STREAM = StreamSpec("XSELL_CAMPAIGNS", ("xsell.campaigns.>",), store_share=0.40)
# Several DeliveryUpdated per message, and engagement.
CHANNELS_STREAM = StreamSpec("XSELL_CHANNELS", ("xsell.channels.>",), store_share=0.25)
ATTRIBUTION_STREAM = StreamSpec("XSELL_ATTRIBUTION", ("xsell.attribution.>",), store_share=0.04)
# Inbound bulk feeds: published by the institution's systems, not by an xsell service. Kept 4 days, not 14: a nightly
# full dump of every profile would otherwise be kept 14 times over. A feed's dead letter can be replayed for 4 days
# (over a weekend).
INGEST_STREAM = StreamSpec("XSELL_INGEST", ("xsell.ingest.>",), max_age_seconds=4 * 24 * 3600.0, store_share=0.20)
# Dead letters are kept a month so an operator can inspect and replay them.
DEAD_LETTER_STREAM = StreamSpec(
    "XSELL_DLQ", (f"{DEAD_LETTER_PREFIX}.>",), max_age_seconds=30 * 24 * 3600.0, store_share=0.05
)

ALL_STREAMS = (
    SEGMENTS_STREAM,
    CAMPAIGNS_STREAM,
    CHANNELS_STREAM,
    ATTRIBUTION_STREAM,
    INGEST_STREAM,
    DEAD_LETTER_STREAM,
)


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
CHANNELS_RESEND = _consumer(CHANNELS_STREAM, "channels-resend", DISPATCH_RESENT)
ATTRIBUTION_OUTREACH = _consumer(CAMPAIGNS_STREAM, "attribution-outreach", OUTREACH_CREATED)
ATTRIBUTION_DELIVERY = _consumer(CHANNELS_STREAM, "attribution-delivery", DELIVERY_UPDATED)
ATTRIBUTION_ENGAGEMENT = _consumer(CHANNELS_STREAM, "attribution-engagement", ENGAGEMENT_RECORDED)
# The control group: people held out of a run, against whom attribution measures incremental lift.
ATTRIBUTION_HOLDOUT = _consumer(CAMPAIGNS_STREAM, "attribution-holdout", HOLDOUT_ASSIGNED)
ATTRIBUTION_WITHDRAWAL = _consumer(CAMPAIGNS_STREAM, "attribution-withdrawal", OUTREACH_WITHDRAWN)
# Segments records engagement and conversions on the person's profile (email_opened, converted...),
# so audiences can use them: "did not click in 30 days", "not converted yet".
SEGMENTS_ENGAGEMENT = _consumer(CHANNELS_STREAM, "segments-engagement", ENGAGEMENT_RECORDED)
SEGMENTS_CONVERSION = _consumer(ATTRIBUTION_STREAM, "segments-conversion", CONVERSION_RECORDED)
# Bulk event feeds. A message is a whole batch (up to 5000 events, ~1 MB), so few are fetched and
# in flight at once: memory stays bounded and, with one handler per process, batches apply in order.
SEGMENTS_BULK_INGEST = _consumer(
    INGEST_STREAM,
    "segments-bulk-ingest",
    INGEST_EVENTS,
    batch_size=4,
    max_ack_pending=8,
    ack_wait_seconds=120.0,
)
# Bulk profile feeds, as the event feeds: a message is a batch of up to 5000 profiles.
SEGMENTS_BULK_PROFILES = _consumer(
    INGEST_STREAM,
    "segments-bulk-profiles",
    INGEST_PROFILES,
    batch_size=4,
    max_ack_pending=8,
    ack_wait_seconds=120.0,
)
# Campaigns records delivery and engagement on its outreaches: per-campaign and per-label reports,
# and the automatic pause when bounces, complaints or opt-outs in a run's released part cross a threshold.
CAMPAIGNS_DELIVERY = _consumer(CHANNELS_STREAM, "campaigns-delivery", DELIVERY_UPDATED)
CAMPAIGNS_ENGAGEMENT = _consumer(CHANNELS_STREAM, "campaigns-engagement", ENGAGEMENT_RECORDED)
# Campaigns starts triggered campaigns' outreaches on segment entries (a person entering a segment is
# the trigger; see docs/campaigns.md#triggers).
CAMPAIGNS_TRIGGERS = _consumer(SEGMENTS_STREAM, "campaigns-triggers", MEMBERSHIP_CHANGED)

CONSUMERS = tuple(spec for spec in list(globals().values()) if isinstance(spec, ConsumerSpec))
"""Every durable above; a durable's name starts with the service that runs it."""


def owner(consumer: ConsumerSpec) -> str:
    """The service that runs a durable (its name's first word)."""
    return consumer.durable.split("-", 1)[0]
