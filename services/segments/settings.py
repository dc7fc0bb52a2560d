"""Settings of the segments service, read from XSELL_SEGMENTS_* environment variables."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from plumbing.settings import ServiceSettings


class SegmentsSettings(ServiceSettings):
    """E.g. XSELL_SEGMENTS_GRPC_PORT=50061, XSELL_SEGMENTS_EVENT_RETENTION_DAYS=730."""

    model_config = SettingsConfigDict(env_prefix="XSELL_SEGMENTS_", extra="ignore")

    grpc_port: int = Field(50061, description="gRPC port of the segments service; 0 picks a free one (tests).")
    event_retention_days: int = Field(
        730, description="Events older than this many days are rejected at ingestion and not evaluated.", gt=0
    )
    future_skew_seconds: int = Field(
        300, description="How far in the future an event's occur_time may be (clock skew of the producer).", ge=0
    )
