"""Settings of the channels service, read from XSELL_CHANNELS_* environment variables."""

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from plumbing.settings import ServiceSettings
from services.channels.recipients import DEV_SECRET


class ChannelsSettings(ServiceSettings):
    """Channels settings; e.g. XSELL_CHANNELS_SMTP_HOST, XSELL_CHANNELS_TRACKING_SECRET."""

    model_config = SettingsConfigDict(env_prefix="XSELL_CHANNELS_", extra="ignore")

    grpc_port: int = Field(50063, description="gRPC port of ChannelsService; 0 picks a free one (tests).")
    smtp_host: str = Field("127.0.0.1", description="SMTP relay that e-mail is handed to.")
    smtp_port: int = Field(1025, description="Port of the SMTP relay.")
    smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection with STARTTLS before sending.")
    smtp_implicit_tls: bool = Field(
        False, description="Speak TLS from the connection's first byte (port 465), for relays without STARTTLS."
    )
    smtp_tls_ca_file: str | None = Field(
        None,
        description="PEM bundle of the CA that signs the relay's certificate (a private CA); unset: the system's CAs. "
        "The certificate and its host name are always verified.",
    )
    smtp_username: str | None = Field(None, description="SMTP AUTH user; unset means no authentication.")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password.")
    smtp_delivery_reports: bool = Field(
        False,
        description="Ask the relay for a delivery status notification of every e-mail, delivered or not (RFC 3461 "
        "NOTIFY=SUCCESS,FAILURE, the campaign ID as ENVID), returned to the return path, whose mailbox on the gateway "
        "records it as the message's receipt: an e-mail a crash left AMBIGUOUS is then settled by its report, or "
        "handed over again when resend_without_receipt_seconds names email. Needs a relay that offers DSN (Postfix, "
        "Exim, Exchange do; most ESPs report through their own webhooks instead); one that does not is refused.",
    )
    smtp_esp_events: Literal["", "sendgrid", "ses"] = Field(
        "",
        description="The relay is an ESP that reports through its own signed event webhook: sendgrid (smtp.sendgrid"
        ".net) or ses (email-smtp.<region>.amazonaws.com, its events published to an SNS topic). Every e-mail then "
        "carries its campaign ID where the ESP gives it to each event of the message: a unique arg (X-SMTPAPI) for "
        "SendGrid, posted to the gateway's /webhooks/email/sendgrid; a message tag (X-SES-MESSAGE-TAGS) for SES, whose "
        "SNS topic posts to /webhooks/email/ses. Processed / Send and delivered / Delivery are receipts (an e-mail a "
        "crash left AMBIGUOUS is settled by them, or handed over again when resend_without_receipt_seconds names "
        "email), a bounce, a complaint or an unsubscribe is engagement.",
    )
    smtp_ses_configuration_set: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_-]{0,64}$",
        description="With smtp_esp_events=ses: the SES configuration set every e-mail names (X-SES-CONFIGURATION-SET), "
        "whose event destination publishes Send, Delivery, Bounce, Complaint, Reject, Open and Click to the SNS topic "
        "the gateway subscribes to. Empty: none is named (the sending identity's default configuration set applies).",
    )
    smtp_timeout_seconds: float = Field(10.0, description="Timeout of each SMTP connect and command.")
    smtp_connections: int = Field(
        4, ge=1, description="SMTP sessions kept open to the relay; each carries one message at a time, many in turn."
    )
    smtp_messages_per_session: int = Field(
        1000,
        ge=1,
        description="Mail transactions one SMTP session carries before it is ended with QUIT and another opened; "
        "below the relay's own cap (SendGrid 5,000, SocketLabs 50), which would refuse the next with a 4xx.",
    )
    from_address: str = Field("offers@xsell.local", description="From address of e-mail.")
    return_path: str = Field(
        "",
        description="Envelope sender of e-mail (MAIL FROM): where receiving servers return bounces and feedback loops "
        "send complaints, an address the gateway's bounce mailbox receives (docs/channels.md). Empty: from_address.",
    )
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
        100,
        ge=1,
        description="How many DispatchRequested events one replica handles at the same time; their intents and "
        "their outcomes are each written in one transaction, so a whole fetch (100) in flight is one commit each.",
    )

    # HTTP providers. The defaults point at the local provider servers `make run` starts (devstack.provider_sinks).
    sms_base_url: str = Field(
        "http://127.0.0.1:8091", description="Exotel API base URL, e.g. https://api.in.exotel.com (Mumbai)."
    )
    sms_account_sid: str = Field("xsell-dev", description="Exotel account SID.")
    sms_api_key: str = Field("dev-key", description="Exotel API key (HTTP basic auth user).")
    sms_api_token: SecretStr = Field(SecretStr("dev-token"), description="Exotel API token (basic auth password).")
    sms_dlt_entity_id: str = Field("1101000000000000001", description="The institution's DLT principal entity id.")
    sms_type: str = Field(
        "promotional", description="Exotel SmsType: transactional, transactional_opt_in, promotional."
    )
    sms_status_callback_url: str = Field(
        "", description="Where Exotel posts delivery status (the gateway's webhook); empty sends none."
    )
    whatsapp_base_url: str = Field(
        "http://127.0.0.1:8092", description="WhatsApp Cloud API base URL, https://graph.facebook.com in production."
    )
    whatsapp_api_version: str = Field("v21.0", description="Graph API version in the message URL.")
    whatsapp_phone_number_id: str = Field("100000000000001", description="The business phone number's id.")
    whatsapp_access_token: SecretStr = Field(
        SecretStr("dev-whatsapp-token"), description="System user access token (bearer)."
    )
    push_base_url: str = Field(
        "http://127.0.0.1:8093", description="FCM HTTP v1 base URL, https://fcm.googleapis.com in production."
    )
    fcm_project_id: str = Field("xsell-dev", description="Firebase project id in the send URL.")
    fcm_service_account: SecretStr | None = Field(
        None,
        description="The Firebase service account's JSON key, or the path of the file holding it; channels mints "
        "the OAuth 2.0 token for the firebase.messaging scope from it and refreshes it before it expires. Unset "
        "uses fcm_access_token.",
    )
    fcm_access_token: SecretStr = Field(
        SecretStr("dev-fcm-token"),
        description="A fixed OAuth 2.0 access token for the firebase.messaging scope, used only when "
        "fcm_service_account is unset (local provider servers, or a token refreshed from outside).",
    )
    webhook_secret: SecretStr = Field(
        SecretStr("dev-webhook-secret-change-me"),
        description="HMAC-SHA256 key of X-Xsell-Signature on webhook calls; the receivers hold the same one.",
    )
    recipient_key_secret: SecretStr = Field(
        SecretStr(DEV_SECRET.decode()),
        description="HMAC key of the hash of each SMS and WhatsApp recipient's number kept on its message (never the "
        "number), by which an inbound STOP or YES that quotes none of our messages finds the last one sent to that "
        "number. The same in every replica; a new key stops matching replies to messages sent before it.",
    )
    webhook_allowed_hosts: list[str] = Field(
        ["127.0.0.1", "localhost"], description="Hosts webhook calls may go to (JSON list); nothing else is called."
    )
    http_timeout_seconds: float = Field(
        10.0, description="How long to wait for a provider's answer once the request is sent."
    )
    http_connect_timeout_seconds: float = Field(3.0, description="How long to wait for a provider connection.")
    provider_rate_per_second: dict[str, float] = Field(
        {"sms": 100.0, "whatsapp": 80.0, "push": 500.0, "webhook": 50.0},
        description="Token-bucket rate per provider (email, sms, whatsapp, push, webhook) in one replica (JSON "
        "object); a provider not named is not limited beyond dispatch_concurrency.",
    )
    provider_concurrency: dict[str, int] = Field(
        {"sms": 32, "whatsapp": 32, "push": 64, "webhook": 16},
        description="Calls in flight at once per provider in one replica (JSON object; 16 for a rate-limited provider "
        "not named). E-mail, when not named, is held to twice smtp_connections: a message waits for its turn on a "
        "session before its intent is written, so a crash leaves at most that many e-mails AMBIGUOUS, not every one "
        "dispatch_concurrency let in.",
    )
    retry_base_seconds: float = Field(
        2.0, gt=0, description="First backoff step after a transient failure; it doubles, with jitter."
    )
    retry_cap_seconds: float = Field(300.0, gt=0, description="Longest backoff between two attempts.")
    resend_without_receipt_seconds: dict[str, float] = Field(
        {"whatsapp": 900.0},
        description="Per provider that reports every message it accepts (sms, whatsapp; JSON object): how long an "
        "AMBIGUOUS hand-over waits for that report before it is handed over again, once (docs/channels.md, "
        '"Exactly once"). A report later than this means the person may get it twice; a provider not named is never '
        "handed a message again. WhatsApp's `sent` status comes within seconds; Exotel reports an SMS only at its "
        "final status, which can take hours for a switched-off phone, so SMS is off by default. E-mail may be named "
        "only with smtp_delivery_reports or smtp_esp_events; its success report comes when the receiving server takes "
        "the message (a DSN, minutes later, or hours for one that defers it), or an ESP's acceptance within seconds "
        "(SendGrid's processed, SES's Send).",
    )
    resend_poll_seconds: float = Field(
        5.0, gt=0, description="How often AMBIGUOUS messages past their provider's window are looked for."
    )
    quiet_hours: dict[str, str] = Field(
        {},
        description='Local-time windows with no sends per channel (JSON object), e.g. {"CHANNEL_SMS": "21:00-09:00"}.',
    )
    quiet_hours_time_zone: str = Field("Asia/Kolkata", description="Time zone of quiet_hours.")
    recheck_after_seconds: float = Field(
        1.0,
        ge=0,
        description="A message kept at least this long by its provider's throttle or token endpoint has its quiet "
        "hours and suppressions checked again before it goes.",
    )
    segments_target: str = Field(
        "",
        description="The segments service (host:port) asked for suppressions at send time; empty skips the check.",
    )

    @property
    def provider_limits(self) -> dict[str, tuple[float | None, int]]:
        """Each limited provider's (rate a second or None, calls in flight): e-mail always, at twice smtp_connections
        unless named (each session carries one message at a time, and one more per session is ready to go)."""
        concurrency = {"email": 2 * self.smtp_connections, **self.provider_concurrency}
        names = set(self.provider_rate_per_second) | set(concurrency)
        return {name: (self.provider_rate_per_second.get(name), concurrency.get(name, 16)) for name in sorted(names)}

    @model_validator(mode="after")
    def _one_tls_mode(self) -> "ChannelsSettings":
        if self.smtp_starttls and self.smtp_implicit_tls:
            raise ValueError(
                "set XSELL_CHANNELS_SMTP_STARTTLS (port 587) or XSELL_CHANNELS_SMTP_IMPLICIT_TLS (port 465), not both"
            )
        return self

    @model_validator(mode="after")
    def _email_resent_only_with_reports(self) -> "ChannelsSettings":
        if "email" in self.resend_without_receipt_seconds and not self.email_reports:
            raise ValueError(
                "XSELL_CHANNELS_RESEND_WITHOUT_RECEIPT_SECONDS names email, but without "
                "XSELL_CHANNELS_SMTP_DELIVERY_REPORTS or XSELL_CHANNELS_SMTP_ESP_EVENTS no e-mail reports back: set "
                "one, or leave email out"
            )
        return self

    @model_validator(mode="after")
    def _configuration_set_only_through_ses(self) -> "ChannelsSettings":
        if self.smtp_ses_configuration_set and self.smtp_esp_events != "ses":
            raise ValueError(
                "XSELL_CHANNELS_SMTP_SES_CONFIGURATION_SET names an SES configuration set, but "
                "XSELL_CHANNELS_SMTP_ESP_EVENTS is not ses: set it to ses, or leave the configuration set out"
            )
        return self

    @property
    def email_reports(self) -> bool:
        """Whether every e-mail reports back: by DSN to the gateway's mailbox, or by the ESP's event webhook."""
        return self.smtp_delivery_reports or bool(self.smtp_esp_events)
