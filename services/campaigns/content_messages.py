"""Rendered content as xsell.campaigns.v1 messages: the DispatchRequested per channel, and previews."""

from services.campaigns.content import (
    Rendered,
    RenderedPush,
    RenderedSms,
    RenderedWebhook,
    RenderedWhatsApp,
)
from services.campaigns.messages import channel_value
from services.campaigns.rendering import RenderedEmail
from xsell.campaigns.v1 import events_pb2, resources_pb2


def dispatch_message(
    campaign_id: str, profile_id: str, channel: str, rendered: Rendered, address: str, *, test: bool = False
) -> events_pb2.DispatchRequested:
    """The DispatchRequested of one outreach: the message matching `channel`, sent to `address`."""
    message = events_pb2.DispatchRequested(
        campaign_id=campaign_id,
        profile_id=profile_id,
        channel=channel_value(channel),  # type: ignore[arg-type]
        test=test,
    )
    if isinstance(rendered, RenderedEmail):
        # Set in place rather than built and copied in (CopyFrom): a third of this message's cost, once per outreach.
        email = message.email
        email.SetInParent()  # present even if every field were empty, as CopyFrom makes it
        email.to_address, email.from_name, email.subject = address, rendered.from_name, rendered.subject
        email.html_body, email.text_body = rendered.html_body, rendered.text_body
    elif isinstance(rendered, RenderedSms):
        message.sms.CopyFrom(
            events_pb2.SmsMessage(
                to_number=address,
                sender_id=rendered.sender_id,
                dlt_template_id=rendered.dlt_template_id,
                body=rendered.body,
            )
        )
    elif isinstance(rendered, RenderedWhatsApp):
        message.whatsapp.CopyFrom(
            events_pb2.WhatsAppMessage(
                to_number=address,
                template_name=rendered.template_name,
                language_code=rendered.language_code,
                parameters=list(rendered.parameters),
            )
        )
    elif isinstance(rendered, RenderedPush):
        message.push.CopyFrom(
            events_pb2.PushMessage(
                device_token=address, title=rendered.title, body=rendered.body, deep_link=rendered.deep_link
            )
        )
    elif isinstance(rendered, RenderedWebhook):
        message.webhook.CopyFrom(events_pb2.WebhookMessage(url=rendered.url, payload_json=rendered.payload_json))
    return message


def rendered_proto(
    channel: str, rendered: Rendered | None, *, unavailable_reason: str = "", render_error: str = ""
) -> resources_pb2.RenderedContent:
    """A preview: what `rendered` shows on `channel`, or why it could not be rendered."""
    preview = resources_pb2.RenderedContent(
        channel=channel_value(channel),  # type: ignore[arg-type]
        unavailable_reason=unavailable_reason,
        render_error=render_error,
    )
    if isinstance(rendered, RenderedEmail):
        preview.subject, preview.html_body, preview.text_body = rendered.subject, rendered.html_body, rendered.text_body
    elif isinstance(rendered, RenderedSms):
        preview.text_body = rendered.body
    elif isinstance(rendered, RenderedWhatsApp):
        preview.parameters.extend(rendered.parameters)
    elif isinstance(rendered, RenderedPush):
        preview.title, preview.text_body, preview.payload = rendered.title, rendered.body, rendered.deep_link
    elif isinstance(rendered, RenderedWebhook):
        preview.payload = rendered.payload_json
    return preview
