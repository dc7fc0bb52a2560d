"""Valid sample messages for each HTTP channel, as campaigns would hand them to channels: shared by the
channels tests and the channels bench, so both exercise the same request shapes the provider sinks check."""

from xsell.campaigns.v1.events_pb2 import DispatchRequested, PushMessage, SmsMessage, WebhookMessage, WhatsAppMessage
from xsell.type.v1 import channel_pb2

SMS_TEMPLATE = "1107161234567890123"
"""A DLT template id in the registered form (19 digits)."""


def fill_http_message(event: DispatchRequested, channel: str, *, webhook_url: str, device_token: str) -> None:
    """Sets `event`'s channel and a valid message for an HTTP channel: sms, whatsapp, push or webhook."""
    if channel == "sms":
        event.channel = channel_pb2.CHANNEL_SMS
        event.sms.CopyFrom(
            SmsMessage(
                to_number="+919876543210",
                sender_id="ACMEBK",
                dlt_template_id=SMS_TEMPLATE,
                body="Dear customer, your loan of Rs 5,00,000 is pre-approved.",
            )
        )
    elif channel == "whatsapp":
        event.channel = channel_pb2.CHANNEL_WHATSAPP
        event.whatsapp.CopyFrom(
            WhatsAppMessage(
                to_number="+919876543210",
                template_name="preapproved_loan_offer",
                language_code="en",
                parameters=["Priya", "5,00,000"],
            )
        )
    elif channel == "push":
        event.channel = channel_pb2.CHANNEL_PUSH
        event.push.CopyFrom(PushMessage(device_token=device_token, title="Pre-approved", body="Your loan"))
    elif channel == "webhook":
        event.channel = channel_pb2.CHANNEL_WEBHOOK
        event.webhook.CopyFrom(WebhookMessage(url=webhook_url, payload_json='{"task": "call"}'))
    else:
        raise ValueError(f"{channel} is not an HTTP channel; one of sms, whatsapp, push, webhook")
