"""The settings every xsell process shares; each service subclasses them with its own env prefix."""

from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Read from the environment under the subclass's prefix, e.g. XSELL_SEGMENTS_GRPC_PORT."""

    model_config = SettingsConfigDict(extra="ignore")

    grpc_host: str = Field(default="127.0.0.1", description="Interface the gRPC server binds to.")
    grpc_port: int = Field(default=0, description="gRPC port; 0 picks a free one (tests).")
    grpc_max_connection_age_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long a client's connection to the gRPC server lasts (+/-10 %) before the server asks it to "
        "reconnect (HTTP/2 GOAWAY): the client then resolves its dns:/// target again, so replicas a scale-up added "
        "get their share of the calls. 0 keeps connections for ever.",
    )
    grpc_max_connection_age_grace_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="How long the calls in flight on a connection past its age may still take; new calls already go "
        "to a new connection. Long, because a campaign run's StreamSegmentMembers streams for as long as the run "
        "releases its audience (a stream cut here ends UNAVAILABLE and the run resumes from its cursor at the next "
        "poll). Shutdown has its own bound, shutdown_grace_seconds.",
    )
    var_dir: Path = Field(default=Path("var"), description="Local data: SQLite files, NATS store, span store.")
    database_url: str = Field(default="", description="SQLAlchemy async URL; empty means a SQLite file under var_dir.")
    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server with JetStream.")
    nats_user: str = Field(
        default="",
        description="NATS user this process connects as (empty: none, for a server without authorization). Its "
        "replies come to the inbox prefix _INBOX_<user>, which that user's permissions alone may read "
        "(services/nats_access.py).",
    )
    nats_password: SecretStr = Field(default=SecretStr(""), description="That NATS user's password.")
    nats_tls_ca: Path | None = Field(
        default=None,
        description="CA certificates (PEM) the NATS server's certificate is checked against: the connection is TLS "
        "(with a tls:// nats_url), and the password and every event go encrypted. Unset: plain TCP, for a server "
        "without TLS (tests, benchmarks).",
    )
    nats_jetstream_api: str = Field(
        default="$JS.API",
        description="Where this process's NATS account finds JetStream's API: $JS.API where the account holds "
        "JetStream; XSELL.API where it imports its own part of account XSELL's (services/nats_access.py), and then "
        "the streams and durables are made beforehand by `python -m services.nats_provision`.",
    )
    metrics_port: int | None = Field(
        default=None, description="Port of the Prometheus /metrics endpoint; unset disables it, 0 picks a free one."
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="JetStream replicas of the streams this process creates or updates: 1 on one server, 3 on the "
        "3-member cluster (every stream then survives the loss of a member).",
    )
    sqlite_checkpoint_interval_seconds: float = Field(
        default=0.25,
        ge=0,
        description="On the SQLite default: how often a thread of its own checkpoints the database's write-ahead "
        "log, so that no commit on the service's loop copies it into the file; 0 leaves it to SQLite (the commit "
        "that passes 1,000 pages).",
    )
    log_level: str = Field(default="info", description="Minimum log level: debug, info, warning, error.")
    shutdown_grace_seconds: float = Field(
        default=10.0, description="How long in-flight calls may take to finish after SIGTERM."
    )
    outbox_keep_published_hours: float = Field(
        default=24.0,
        ge=0,
        description="How long an event stays in the outbox after it was published, for inspection; the relay "
        "prunes older ones (an unpublished event is never pruned).",
    )

    idempotency_keep_days: float = Field(
        default=90.0,
        ge=1,
        description="How long a mutating call's answer is remembered by its request_id: a retry within it gets the "
        "first answer, and the relay prunes older ones (after that the same request_id is a new request).",
    )

    @property
    def outbox_keep_published(self) -> timedelta:
        return timedelta(hours=self.outbox_keep_published_hours)

    @property
    def idempotency_keep(self) -> timedelta:
        return timedelta(days=self.idempotency_keep_days)

    def resolved_database_url(self, service: str) -> str:
        """The configured URL, or the embedded SQLite default for the service."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.var_dir / f'{service}.db').resolve()}"


class ToolSettings(ServiceSettings):
    """An operator tool's settings (the dead-letter tool, the NATS provisioner), run beside the services rather than
    as one: XSELL_NATS_URL, XSELL_NATS_USER, XSELL_NATS_PASSWORD, XSELL_NATS_TLS_CA, XSELL_STREAM_REPLICAS."""

    model_config = SettingsConfigDict(env_prefix="XSELL_", extra="ignore")
