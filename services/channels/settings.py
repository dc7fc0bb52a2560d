"""Settings of the channels service, read from XSELL_CHANNELS_* environment variables."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from plumbing.settings import ServiceSettings


class ChannelsSettings(ServiceSettings):
    """Channels settings; e.g. XSELL_CHANNELS_SMTP_HOST, XSELL_CHANNELS_TRACKING_SECRET."""

    model_config = SettingsConfigDict(env_prefix="XSELL_CHANNELS_", extra="ignore")

    grpc_port: int = Field(50063, description="gRPC port of ChannelsService; 0 picks a free one (tests).")
    smtp_host: str = Field("127.0.0.1", description="SMTP relay that e-mail is handed to.")
    smtp_port: int = Field(1025, description="Port of the SMTP relay.")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS before sending.")
    smtp_username: str | None = Field(None, description="SMTP AUTH user; unset means no authentication.")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password.")
    smtp_timeout_seconds: float = Field(10.0, description="Timeout of each SMTP connect and command.")
    from_address: str = Field("offers@xsell.local", description="Envelope sender and From address of e-mail.")
    tracking_base_url: str = Field(
        "http://127.0.0.1:8080",
        description="The gateway's HTTP edge that serves /c (click), /o (open) and /u (unsubscribe); https in "
        "production, which one-click List-Unsubscribe requires.",
    )
    tracking_secret: SecretStr = Field(
        SecretStr("dev-tracking-secret-change-me"),
        description="HMAC key of tracking and unsubscribe tokens; the gateway must be given the same one.",
    )
    message_id_domain: str = Field("xsell.local", description="Right-hand side of Message-ID: <campaign ID@domain>.")
    dispatch_concurrency: int = Field(
        8, ge=1, description="How many DispatchRequested events one replica sends at the same time."
    )
