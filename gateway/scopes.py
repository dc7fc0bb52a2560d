"""Which scope each exposed RPC needs: the one table the gateway authorises by."""

from xsell.channels.v1 import resources_pb2 as channels_resources

INGEST = "ingest"
PROFILES_READ = "profiles.read"
SEGMENTS_MANAGE = "segments.manage"
CAMPAIGNS_MANAGE = "campaigns.manage"
CRM_LEADS = "crm.leads"
LOS_EVENTS = "los.events"
REPORTS_READ = "reports.read"
"""Aggregates only (the dashboard's key): reports by campaign, label, trigger and channel, and lift; no person."""
OUTREACH_READ = "outreach.read"
"""One outreach or one person's record: a message's timeline, an outreach's attribution (its loans, amounts and CRM
leads), why a person was or was not reached, the messages awaiting settlement. Support, SREs and operators; not
their profile attributes, which need profiles.read."""
APPROVE = "approve"
"""Maker-checker: approving or rejecting what someone else submitted."""
SUPPRESSIONS_MANAGE = "suppressions.manage"
"""Compliance and CRM: adding and lifting opt-outs, complaints and other suppressions."""
APP_EVENTS = "app.events"
"""The institution's app backend: what people do with a push (received, opened, tapped, turned off), which no provider
reports, recorded on the outreach named by the campaign ID the push carries in its data."""
ADMIN = "admin"
"""Grants every scope."""

AUTHENTICATED = "authenticated"
"""Not a grantable scope: the method needs any valid key."""

GRANTABLE_SCOPES = frozenset(
    {
        INGEST,
        PROFILES_READ,
        SEGMENTS_MANAGE,
        CAMPAIGNS_MANAGE,
        CRM_LEADS,
        LOS_EVENTS,
        REPORTS_READ,
        OUTREACH_READ,
        APPROVE,
        SUPPRESSIONS_MANAGE,
        APP_EVENTS,
        ADMIN,
    }
)

SEGMENTS_SERVICE = "xsell.segments.v1.SegmentsService"
CAMPAIGNS_SERVICE = "xsell.campaigns.v1.CampaignsService"
CHANNELS_SERVICE = "xsell.channels.v1.ChannelsService"
ATTRIBUTION_SERVICE = "xsell.attribution.v1.AttributionService"
GATEWAY_SERVICE = "xsell.gateway.v1.GatewayService"

FORWARDED_SERVICES = (SEGMENTS_SERVICE, CAMPAIGNS_SERVICE, CHANNELS_SERVICE, ATTRIBUTION_SERVICE)
"""Services whose own API the gateway serves by passing calls through."""

# Health and reflection answer without a key: probes and tooling must work before anyone has one.
PUBLIC_SERVICES = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)


def _method(service: str, name: str) -> str:
    return f"/{service}/{name}"


METHOD_SCOPES: dict[str, str] = {
    _method(SEGMENTS_SERVICE, "UpsertProfiles"): INGEST,
    _method(SEGMENTS_SERVICE, "IngestEvents"): INGEST,
    # Personal data: a profile, who is in a segment, whether one person is.
    _method(SEGMENTS_SERVICE, "GetProfile"): PROFILES_READ,
    _method(SEGMENTS_SERVICE, "ListSegmentMembers"): PROFILES_READ,
    _method(SEGMENTS_SERVICE, "CheckMembership"): PROFILES_READ,
    _method(SEGMENTS_SERVICE, "CreateSegment"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "GetSegment"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "ListSegments"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "PublishSegment"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "UpdateSegment"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "SubmitSegment"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "ArchiveSegment"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "ListSegmentAudit"): SEGMENTS_MANAGE,
    # Counts and opaque profile ids only; attributes need profiles.read.
    _method(SEGMENTS_SERVICE, "PreviewSegment"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "DefineAttributes"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "ListAttributes"): SEGMENTS_MANAGE,
    _method(SEGMENTS_SERVICE, "ApproveSegment"): APPROVE,
    _method(SEGMENTS_SERVICE, "RejectSegment"): APPROVE,
    _method(SEGMENTS_SERVICE, "ExplainMembership"): PROFILES_READ,
    _method(SEGMENTS_SERVICE, "StreamSegmentMembers"): PROFILES_READ,
    _method(SEGMENTS_SERVICE, "ListSuppressions"): PROFILES_READ,
    _method(SEGMENTS_SERVICE, "CheckSuppression"): PROFILES_READ,
    _method(SEGMENTS_SERVICE, "AddSuppressions"): SUPPRESSIONS_MANAGE,
    _method(SEGMENTS_SERVICE, "RemoveSuppression"): SUPPRESSIONS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "CreateCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "GetCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "ListCampaigns"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "LaunchCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "ListOutreaches"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "UpdateCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "SubmitCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "PauseCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "ResumeCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "CancelCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "ListCampaignAudit"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "ListCampaignRuns"): CAMPAIGNS_MANAGE,
    # A preview renders one person's attributes into the content: the same trust as editing the campaign.
    _method(CAMPAIGNS_SERVICE, "PreviewCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "TestSendCampaign"): CAMPAIGNS_MANAGE,
    _method(CAMPAIGNS_SERVICE, "ApproveCampaign"): APPROVE,
    _method(CAMPAIGNS_SERVICE, "RejectCampaign"): APPROVE,
    _method(CAMPAIGNS_SERVICE, "GetCampaignReport"): REPORTS_READ,
    # Why one person (a profile id) was or was not reached: their suppressions, caps and eligibility.
    _method(CAMPAIGNS_SERVICE, "ExplainOutreach"): OUTREACH_READ,
    _method(CAMPAIGNS_SERVICE, "GetLabelReport"): REPORTS_READ,
    _method(CAMPAIGNS_SERVICE, "GetOutreach"): CRM_LEADS,
    _method(ATTRIBUTION_SERVICE, "CreateLead"): CRM_LEADS,
    # The leads replies made, which the CRM pulls to assign a relationship manager, then records with CreateLead.
    _method(ATTRIBUTION_SERVICE, "ListLeads"): CRM_LEADS,
    # A support agent finds the outreach that prompted a caller's inquiry: every outreach of one person, with its
    # loans and money, so it is the support desk's outreach.read, not every CRM integration's crm.leads.
    _method(ATTRIBUTION_SERVICE, "ListProfileOutreaches"): OUTREACH_READ,
    _method(GATEWAY_SERVICE, "LookupCampaignRecord"): CRM_LEADS,
    _method(ATTRIBUTION_SERVICE, "RecordApplication"): LOS_EVENTS,
    _method(ATTRIBUTION_SERVICE, "RecordSanction"): LOS_EVENTS,
    _method(ATTRIBUTION_SERVICE, "RecordDisbursement"): LOS_EVENTS,
    # One outreach's loans, amounts and CRM leads: a borrower's record, found by a guessable sequential ID.
    _method(ATTRIBUTION_SERVICE, "GetCampaignAttribution"): OUTREACH_READ,
    # Aggregates only: the views and lift carry no person, so the dashboard's reports.read key suffices.
    _method(ATTRIBUTION_SERVICE, "GetAttributionReport"): REPORTS_READ,
    _method(ATTRIBUTION_SERVICE, "GetLift"): REPORTS_READ,
    # The LOS (or fund platform) reports conversions without a campaign ID too, for lift against holdouts.
    _method(ATTRIBUTION_SERVICE, "RecordProfileConversion"): LOS_EVENTS,
    # Fund platforms, banks and card systems report their conversions (invested, funded, first transaction) as the
    # LOS reports disbursements.
    _method(ATTRIBUTION_SERVICE, "RecordConversion"): LOS_EVENTS,
    # A campaign's fixed costs are booked by whoever runs the campaign.
    _method(ATTRIBUTION_SERVICE, "RecordFixedCost"): CAMPAIGNS_MANAGE,
    _method(CHANNELS_SERVICE, "GetMessage"): OUTREACH_READ,
    _method(CHANNELS_SERVICE, "ListAmbiguousMessages"): OUTREACH_READ,
    # Settling what a message did (from the provider's records) is the operators' who run the campaigns.
    _method(CHANNELS_SERVICE, "ResolveAmbiguousMessage"): CAMPAIGNS_MANAGE,
    # FCM reports nothing back to the sender: the app reports a push received (a receipt) and opened or tapped (an
    # engagement), through the institution's app backend, with the campaign ID from the push's data.
    _method(CHANNELS_SERVICE, "RecordEngagement"): APP_EVENTS,
    _method(CHANNELS_SERVICE, "RecordDeliveryReceipt"): APP_EVENTS,
    _method(GATEWAY_SERVICE, "GetCaller"): AUTHENTICATED,
}

# Reachable only inside the cluster: BatchGetProfiles is campaigns' bulk read of people and their suppressions (a CRM
# reads one with GetProfile).
INTERNAL_METHODS = frozenset({_method(SEGMENTS_SERVICE, "BatchGetProfiles")})


APP_EVENT_KINDS = {
    # RecordEngagement: the push opened, or tapped through to its deep link.
    _method(CHANNELS_SERVICE, "RecordEngagement"): (
        "kind",
        frozenset({channels_resources.ENGAGEMENT_KIND_OPENED, channels_resources.ENGAGEMENT_KIND_CLICKED}),
        "ENGAGEMENT_KIND_OPENED or ENGAGEMENT_KIND_CLICKED",
    ),
    # RecordDeliveryReceipt: the app received the push.
    _method(CHANNELS_SERVICE, "RecordDeliveryReceipt"): (
        "state",
        frozenset({channels_resources.DELIVERY_STATE_DELIVERED}),
        "DELIVERY_STATE_DELIVERED",
    ),
}
"""What a caller with app.events alone may report: (field, allowed enum numbers, their names). Channels also holds
it to push messages (plumbing.grpc_server.ONLY_CHANNEL_METADATA): an app backend's key settles and suppresses
nothing else."""


def required_scope(method: str) -> str | None:
    """The scope a full method name (/pkg.Service/Method) needs; None when the gateway does not expose it."""
    return METHOD_SCOPES.get(method)


def is_public(method: str) -> bool:
    return method.lstrip("/").partition("/")[0] in PUBLIC_SERVICES


def authorizes(granted: frozenset[str], required: str) -> bool:
    """Whether a key with `granted` scopes may call a method needing `required`."""
    return required == AUTHENTICATED or ADMIN in granted or required in granted


def exposed_methods(service: str) -> list[str]:
    """The full method names of `service` the gateway serves, in table order."""
    return [method for method in METHOD_SCOPES if method.startswith(f"/{service}/")]
