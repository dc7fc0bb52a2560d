"""The gateway's settings, read from XSELL_GATEWAY_* environment variables."""

import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from gateway.esp_events import verification_key
from gateway.ses_events import SNS_CERT_URL_PATTERN, pinned_certificates
from plumbing.grpc_server import SERVICE_MAX_REQUEST_BYTES, TlsFiles
from plumbing.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """The public edge: gRPC for CRM, LOS and operators; HTTP for tracking links."""

    model_config = SettingsConfigDict(env_prefix="XSELL_GATEWAY_", extra="ignore")

    grpc_port: int = Field(default=50051, description="Public gRPC port; 0 picks a free one (tests).")
    http_host: str = Field(default="127.0.0.1", description="Interface the HTTP tracking edge binds to.")
    http_port: int = Field(
        default=8080, description="HTTP tracking edge port (/c, /o, /u, /healthz); 0 picks a free one."
    )
    segments_target: str = Field(default="127.0.0.1:50061", description="gRPC address of the segments service.")
    campaigns_target: str = Field(default="127.0.0.1:50062", description="gRPC address of the campaigns service.")
    channels_target: str = Field(default="127.0.0.1:50063", description="gRPC address of the channels service.")
    attribution_target: str = Field(default="127.0.0.1:50064", description="gRPC address of the attribution service.")
    tracking_secret: SecretStr = Field(
        default=SecretStr("dev-tracking-secret-change-me"),
        description="HMAC secret of tracking and unsubscribe links; the channels service signs with the same one.",
    )
    bootstrap_api_key: SecretStr | None = Field(
        default=None,
        description="An xsk_<key id>_<secret> key upserted at start as client 'bootstrap' with scope admin.",
    )
    downstream_timeout_seconds: float = Field(
        default=10.0, description="Longest a forwarded call may take; a shorter caller deadline is passed on as is."
    )
    tls_certificate_file: Path | None = Field(
        default=None,
        description="PEM certificate chain of the public gRPC port; with the key file, the port speaks TLS only.",
    )
    tls_private_key_file: Path | None = Field(default=None, description="PEM private key of that certificate.")
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle for mTLS: when set, a client must present a certificate signed by it (the API key "
        "is still required).",
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=SERVICE_MAX_REQUEST_BYTES,
        description="Largest gRPC request accepted, in bytes; gRPC refuses a larger one with RESOURCE_EXHAUSTED "
        "('Received message larger than max'). At most the 32 MiB the services read: this is the limit clients meet.",
    )
    rate_limit_per_second: float = Field(
        default=100.0,
        description="Calls per second each API key may make on average, unless the key has its own limit "
        "(`python -m gateway keys limit`); 0 turns the default limit off.",
    )
    rate_limit_burst: int = Field(
        default=200, description="How many calls a key may make at once before its rate applies (the bucket size)."
    )
    key_cache_seconds: float = Field(
        default=5.0, description="How long an API key look-up is cached; a revocation takes effect within this time."
    )
    tracking_record_timeout_seconds: float = Field(
        default=2.0, description="Longest a tracking request waits for channels to record it before answering anyway."
    )
    whatsapp_app_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Meta app secret: the key of X-Hub-Signature-256 on WhatsApp webhooks; empty refuses them all.",
    )
    whatsapp_verify_token: SecretStr = Field(
        default=SecretStr(""),
        description="The verify token entered in Meta's webhook settings (GET /webhooks/whatsapp); empty refuses.",
    )
    sms_callback_token: SecretStr = Field(
        default=SecretStr(""),
        description="Secret path segment of /webhooks/sms/exotel/<token> (Exotel does not sign callbacks); "
        "empty refuses every SMS callback.",
    )
    sms_callback_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Key of the Twilio-style X-Twilio-Signature (HMAC-SHA1 over the URL and the sorted form fields) "
        "that SMS callbacks must then carry; empty checks the URL token alone (Exotel signs nothing).",
    )
    sendgrid_verification_key: str = Field(
        default="",
        description="The verification key of SendGrid's signed Event Webhook (its mail settings: base64 of a DER "
        "ECDSA P-256 public key): POST /webhooks/email/sendgrid checks X-Twilio-Email-Event-Webhook-Signature with it. "
        "Empty refuses every post (channels' XSELL_CHANNELS_SMTP_ESP_EVENTS=sendgrid names the outreach in each).",
    )
    ses_topic_arns: list[str] = Field(
        default=[],
        description="The SNS topics SES publishes e-mail events to (JSON list of ARNs; a configuration set's event "
        "destination, or an identity's notifications): POST /webhooks/email/ses records a signed post of one of these "
        "and confirms its subscription. Empty refuses every post (channels' XSELL_CHANNELS_SMTP_ESP_EVENTS=ses names "
        "the outreach in each event). Not a secret: a post is trusted by SNS's signature, not by its topic.",
    )
    sns_cert_url_pattern: str = Field(
        default=SNS_CERT_URL_PATTERN,
        description="A regular expression a SigningCertURL (and a SubscribeURL) must match from its first character: "
        "where SNS's signing certificates are (AWS's own SNS hosts, over HTTPS). A post whose certificate is elsewhere "
        "is refused without fetching it.",
    )
    sns_signing_certificates: str = Field(
        default="",
        description="SNS's signing certificates, pinned (PEM, one or more): a post is verified against them and no "
        "certificate is fetched, for a gateway that may not reach SNS (the deployment's network policies let only "
        "channels leave the cluster). Take them from the SigningCertURL the gateway logs; add the new one before SNS "
        "rotates. Empty: each post's certificate is fetched from its SigningCertURL.",
    )
    bounce_mailbox_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the SMTP server that receives the return path's mail (XSELL_CHANNELS_RETURN_PATH): "
        "bounces (RFC 3464) and complaint reports (RFC 5965) become the outreach's BOUNCED / COMPLAINED engagement. "
        "Point the return-path domain's MX at it. Unset: no mailbox.",
    )
    bounce_mailbox_host: str = Field(default="127.0.0.1", description="Address the bounce mailbox listens on.")
    message_id_domain: str = Field(
        default="",
        description="Channels' XSELL_CHANNELS_MESSAGE_ID_DOMAIN: a returned message whose Message-ID is <campaign ID@"
        "this domain> is ours. Empty: any domain (channels answers for IDs it does not know).",
    )
    webhook_max_age_seconds: float = Field(
        default=2 * 86400,
        gt=0,
        description="Provider callbacks whose own time (WhatsApp's timestamp, Exotel's DateSent, SNS's Timestamp) is "
        "older are refused as stale, and accepted ones are remembered this long to refuse replays.",
    )
    webhook_public_base_url: str = Field(
        default="",
        description="The public https://host the providers call (behind an ingress the gateway sees another scheme "
        "and host); signed SMS callbacks are checked against it. Empty: the URL as the gateway received it.",
    )

    @field_validator("sendgrid_verification_key")
    @classmethod
    def _a_verification_key(cls, value: str) -> str:
        if value.strip():
            verification_key(value)  # ValueError names what is wrong with it
        return value

    @field_validator("sns_signing_certificates")
    @classmethod
    def _pinned_certificates(cls, value: str) -> str:
        pinned_certificates(value)  # ValueError names what is wrong with them
        return value

    @field_validator("sns_cert_url_pattern")
    @classmethod
    def _a_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        return value

    @model_validator(mode="after")
    def _tls_files_come_together(self) -> "GatewaySettings":
        if (self.tls_certificate_file is None) != (self.tls_private_key_file is None):
            raise ValueError(
                "set both XSELL_GATEWAY_TLS_CERTIFICATE_FILE and XSELL_GATEWAY_TLS_PRIVATE_KEY_FILE, or neither"
            )
        if self.tls_client_ca_file is not None and self.tls_certificate_file is None:
            raise ValueError("XSELL_GATEWAY_TLS_CLIENT_CA_FILE (mTLS) needs the TLS certificate and key files too")
        return self

    def tls(self) -> TlsFiles | None:
        if self.tls_certificate_file is None or self.tls_private_key_file is None:
            return None
        return TlsFiles(self.tls_certificate_file, self.tls_private_key_file, self.tls_client_ca_file)
