"""Settings of the segments service, read from XSELL_SEGMENTS_* environment variables."""

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from plumbing.settings import ServiceSettings
from xsell.type.v1 import channel_pb2

# The fund platform's attributes (the recipe's), shipped with the service.
DEFAULT_CATALOG = Path(__file__).parent / "catalogs" / "default.yaml"


class SegmentsSettings(ServiceSettings):
    """E.g. XSELL_SEGMENTS_GRPC_PORT=50061, XSELL_SEGMENTS_EVENT_RETENTION_DAYS=730."""

    model_config = SettingsConfigDict(env_prefix="XSELL_SEGMENTS_", extra="ignore")

    grpc_port: int = Field(50061, description="gRPC port of the segments service; 0 picks a free one (tests).")
    consent_attributes: dict[str, str] = Field(
        {"WHATSAPP": "whatsapp_opt_in"},
        description="Per channel (its name without CHANNEL_), the BOOLEAN profile attribute that must be true for the "
        "person to be contacted on it (WhatsApp's business policy requires an opt-in); CheckSuppression reports a "
        "person without it as consent_missing.",
    )
    address_attributes: dict[str, str] = Field(
        {"EMAIL": "email", "PUSH": "push_token", "SMS": "phone", "WHATSAPP": "phone"},
        description="Per channel (its name without CHANNEL_), the profile attribute holding the person's address on "
        "it: an upsert that changes it lifts the person's hard_bounce, dnd_registry and unreachable suppressions on "
        "that channel (the address that bounced, the number on the registry or not on WhatsApp, is gone).",
    )
    event_retention_days: int = Field(
        730, description="Events older than this many days are rejected at ingestion and not evaluated.", gt=0
    )
    future_skew_seconds: int = Field(
        300, description="How far in the future an event's occur_time may be (clock skew of the producer).", ge=0
    )
    decline_suppression_days: int = Field(
        90,
        description='A bare "NO" to an offer (a DECLINED reply) suppresses the person on every channel for this '
        "many days (reason RECENT_DECLINE), so no campaign asks again the next week; 0 suppresses nothing.",
        ge=0,
        le=3650,
    )
    dnd_recheck_days: int = Field(
        30,
        description="An SMS the provider refused because the number is on the Do-Not-Disturb registry suppresses SMS "
        "to the person for this many days (reason DND_REGISTRY), then it is tried again (a person may leave the "
        "registry); a new number lifts it at once.",
        ge=1,
        le=3650,
    )
    unreachable_recheck_days: int = Field(
        30,
        description="A message the provider could not deliver because the person is not on the channel at that "
        "address (WhatsApp's 131026: the number is not on WhatsApp, or its app is too old) suppresses the channel for "
        "this many days (reason UNREACHABLE), then it is tried again (a person may join); a new address lifts it at "
        "once. Meanwhile a campaign's fallback channel reaches them.",
        ge=1,
        le=3650,
    )
    # --- governance and audience (issue 3) ---
    require_approval: bool = Field(
        True,
        description="Maker-checker: only a version approved by someone other than its author can be published.",
    )
    sweep_interval_seconds: float = Field(
        60.0,
        description="How often memberships that change with time alone (lapsing event windows) are swept.",
        gt=0,
    )
    bulk_ingest_concurrency: int | None = Field(
        None,
        description="NATS bulk-ingest batches applied at once per process; unset: 1 on SQLite (one writer), 4 on "
        "PostgreSQL (batches on different people run side by side). Order does not matter: events carry their "
        "own times and ids, and every batch re-evaluates the current state.",
        ge=1,
        le=32,
    )
    stream_page_size: int = Field(
        1000, description="Members per StreamSegmentMembers message, read one page at a time.", ge=1, le=10000
    )
    # --- attribute catalog (issue 3, ingest side) ---
    catalog_file: str = Field(
        str(DEFAULT_CATALOG),
        description="YAML catalog declared at start when its attributes are not declared yet; empty disables.",
    )
    catalog_cache_seconds: float = Field(
        5.0, description="How long a replica may use its cached catalog before seeing other replicas' changes.", ge=0
    )

    @field_validator("consent_attributes", "address_attributes")
    @classmethod
    def _by_channel_name(cls, value: dict[str, str]) -> dict[str, str]:
        names = [name.removeprefix("CHANNEL_") for name in channel_pb2.Channel.keys()]  # noqa: SIM118 (an enum)
        names.remove("UNSPECIFIED")
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"keys must be channel names ({', '.join(names)}), not {', '.join(unknown)}")
        return value
