"""Settings of the campaigns service, read from XSELL_CAMPAIGNS_* environment variables."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from plumbing.settings import ServiceSettings
from services.campaigns.content_files import DEFAULT_PRODUCT_CATALOG, DEFAULT_TEMPLATE_REGISTRY
from services.campaigns.triggers import DEFAULT_TRIGGER_CATALOG


class CampaignsSettings(ServiceSettings):
    """e.g. XSELL_CAMPAIGNS_SEGMENTS_TARGET=segments:50061."""

    model_config = SettingsConfigDict(env_prefix="XSELL_CAMPAIGNS_", extra="ignore")

    grpc_port: int = Field(50062, description="gRPC port of CampaignsService; 0 picks a free one (tests).")
    segments_target: str = Field("127.0.0.1:50061", description="host:port of SegmentsService.")
    default_time_zone: str = Field("Asia/Kolkata", description="IANA time zone of campaigns whose schedule names none.")
    release_page_size: int = Field(
        500, ge=1, le=5000, description="Segment members released per transaction by the release runner."
    )
    require_approval: bool = Field(
        True,
        description="Maker-checker: LaunchCampaign needs a campaign APPROVED by someone other than its author.",
    )
    one_offer_per_day: bool = Field(
        False,
        description="At most one outreach per person per local day across every campaign; when several campaigns "
        "qualify a person, the best ranked wins (priority, then offer value, then earliest launch).",
    )
    release_poll_seconds: float = Field(
        1.0, gt=0, description="How often the release runner looks for scheduled runs that fell due."
    )
    fallback_window_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 30,
        description="A campaign with fallback_on_failure stays RUNNING this long after its release ends, so that an "
        "outreach failing or bouncing meanwhile (a bounce report can come hours later) still falls back to a later "
        "channel; then it completes, and later failures fall back no more.",
    )
    product_catalog_file: str = Field(
        str(DEFAULT_PRODUCT_CATALOG),
        description="YAML product catalog {{ recommendations }} are chosen from; empty means no products.",
    )
    trigger_concurrency: int = Field(
        100,
        ge=1,
        le=1000,
        description="Segment entries the trigger consumer takes at once (its fetch); those that arrive together are "
        "handed over in one call and applied in "
        "one transaction after one segments look-up for all their people (the inbox, per-person locks and the "
        "cool-down keep each person's outcome the same in any order). 1 applies them one by one.",
    )
    trigger_catalog_file: str = Field(
        str(DEFAULT_TRIGGER_CATALOG),
        description="YAML trigger catalog (T01 EMI calculator used...); a triggered campaign's trigger_code must be "
        "in it; empty means no campaign can be triggered.",
    )
    template_registry_file: str = Field(
        str(DEFAULT_TEMPLATE_REGISTRY),
        description="YAML registry of DLT SMS and approved WhatsApp templates; empty means none registered.",
    )
