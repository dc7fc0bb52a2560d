"""Content on every channel: templates, the checks before anything is sent, channel choice and rendering."""

import difflib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from jinja2 import nodes

from plumbing.errors import InvalidArgument
from services.campaigns.products import HELD_CATEGORIES_ATTRIBUTE, TIER_ATTRIBUTE, ProductCatalog
from services.campaigns.rendering import (
    ALWAYS_FETCHED_ATTRIBUTES,
    RESERVED_NAMES,
    CompiledEmail,
    CompiledTemplate,
    EmailTemplates,
    Offer,
    RenderedEmail,
    RenderFailed,
    build_context,
    compile_email,
    compile_template,
    render_email,
    render_template,
    template_environment,
)

CHANNELS = ("EMAIL", "SMS", "WHATSAPP", "PUSH", "WEBHOOK")
CONTENT_FIELD = "campaign.content"

# The profile attributes that make a channel available to a person (docs/campaigns.md, "Who can be
# reached on which channel").
EMAIL_ATTRIBUTE = "email"
PHONE_ATTRIBUTE = "phone"
WHATSAPP_OPT_IN_ATTRIBUTE = "whatsapp_opt_in"
PUSH_TOKEN_ATTRIBUTE = "push_token"
CONTACT_ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "EMAIL": (EMAIL_ATTRIBUTE,),
    "SMS": (PHONE_ATTRIBUTE,),
    "WHATSAPP": (PHONE_ATTRIBUTE, WHATSAPP_OPT_IN_ATTRIBUTE),
    "PUSH": (PUSH_TOKEN_ATTRIBUTE,),
    # The institution's own system receives the profile id: everyone is reachable.
    "WEBHOOK": (),
}
E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
DLT_TEMPLATE_ID = re.compile(r"^[0-9]{6,30}$")
SENDER_ID = re.compile(r"^[A-Z0-9]{6}$")
WHATSAPP_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
DLT_VARIABLE = "{#var#}"
# TRAI's DLT rules: each {#var#} stands for at most 30 characters.
DLT_VARIABLE_MAX_CHARS = 30


class RegistryError(ValueError):
    """The template registry file is malformed; the message names the entry and the field."""


@dataclass(frozen=True)
class DltTemplate:
    """An SMS template registered on the DLT platform, with its registered senders and text."""

    template_id: str
    sender_ids: frozenset[str]
    text: str

    def matches(self, body: str) -> bool:
        """True when `body` is the registered text with each {#var#} filled by at most 30 characters.

        Whitespace in the fixed text matches any run of whitespace (a line break for a space).
        """
        fixed = [
            "".join(r"\s+" if chunk.isspace() else re.escape(chunk) for chunk in re.split(r"(\s+)", part) if chunk)
            for part in self.text.strip().split(DLT_VARIABLE)
        ]
        pattern = f"(?:.{{0,{DLT_VARIABLE_MAX_CHARS}}})".join(fixed)
        return re.fullmatch(pattern, body.strip(), flags=re.DOTALL) is not None


@dataclass(frozen=True)
class WhatsAppTemplate:
    """A WhatsApp message template approved by Meta: its name, language and body parameter count."""

    name: str
    language: str
    parameter_count: int


def _squash(text: str) -> str:
    """Whitespace runs as one space (single-line fields: WhatsApp parameters, push titles)."""
    return " ".join(text.split())


@dataclass(frozen=True)
class TemplateRegistry:
    """The registered DLT and WhatsApp templates, from a YAML file shipped with (or mounted into) the service."""

    version: str = ""
    sms: Mapping[str, DltTemplate] = field(default_factory=dict)
    whatsapp: Mapping[tuple[str, str], WhatsAppTemplate] = field(default_factory=dict)


def parse_registry(document: object, source: str) -> TemplateRegistry:
    """{version, sms: [{dlt_template_id, sender_ids, text}], whatsapp: [{name, language, parameters}]}."""
    if not isinstance(document, Mapping):
        raise RegistryError(f"{source}: expected a mapping with 'version', 'sms' and 'whatsapp'")
    version = str(document.get("version") or "").strip()
    if not version:
        raise RegistryError(f"{source}: 'version' is required, e.g. '2026-11-01'")
    sms: dict[str, DltTemplate] = {}
    for index, entry in enumerate(document.get("sms") or []):
        where = f"{source}: sms[{index}]"
        if not isinstance(entry, Mapping):
            raise RegistryError(f"{where} must be a mapping")
        template_id = str(entry.get("dlt_template_id") or "")
        if not DLT_TEMPLATE_ID.match(template_id):
            raise RegistryError(f"{where}.dlt_template_id must be the DLT template id (digits), quoted")
        senders = entry.get("sender_ids") or []
        if not isinstance(senders, list) or not senders or not all(SENDER_ID.match(str(s)) for s in senders):
            raise RegistryError(f"{where}.sender_ids must list the registered six-character headers, e.g. [FUNDSY]")
        text = entry.get("text")
        if not isinstance(text, str) or not text.strip():
            raise RegistryError(f"{where}.text must be the registered text, each variable written {DLT_VARIABLE}")
        if template_id in sms:
            raise RegistryError(f"{where}.dlt_template_id {template_id} appears twice")
        sms[template_id] = DltTemplate(template_id, frozenset(str(s) for s in senders), text)
    whatsapp: dict[tuple[str, str], WhatsAppTemplate] = {}
    for index, entry in enumerate(document.get("whatsapp") or []):
        where = f"{source}: whatsapp[{index}]"
        if not isinstance(entry, Mapping):
            raise RegistryError(f"{where} must be a mapping")
        name, language = str(entry.get("name") or ""), str(entry.get("language") or "en")
        if not WHATSAPP_TEMPLATE_NAME.match(name):
            raise RegistryError(f"{where}.name must be lower-case letters, digits and underscores")
        count = entry.get("parameters", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise RegistryError(f"{where}.parameters must be the number of body parameters, 0 or more")
        if (name, language) in whatsapp:
            raise RegistryError(f"{where}: {name} ({language}) appears twice")
        whatsapp[(name, language)] = WhatsAppTemplate(name, language, count)
    return TemplateRegistry(version, sms, whatsapp)


# ---- what the marketer writes, per channel -------------------------------------------------------


@dataclass(frozen=True)
class SmsTemplates:
    """An SMS: the DLT template id and sender it is registered under, and the body template."""

    dlt_template_id: str
    sender_id: str
    body_template: str


@dataclass(frozen=True)
class WhatsAppTemplates:
    """A WhatsApp template message: the approved template and one template per body parameter."""

    template_name: str
    language_code: str
    parameter_templates: tuple[str, ...]


@dataclass(frozen=True)
class PushTemplates:
    """A push notification: title, body and an optional deep link."""

    title_template: str
    body_template: str
    deep_link_template: str = ""


@dataclass(frozen=True)
class WebhookTemplates:
    """A webhook call: the https URL and a payload template that renders to a JSON object."""

    url: str
    payload_template: str


@dataclass(frozen=True)
class ContentTemplates:
    """A campaign's content on each channel that has some."""

    email: EmailTemplates | None = None
    sms: SmsTemplates | None = None
    whatsapp: WhatsAppTemplates | None = None
    push: PushTemplates | None = None
    webhook: WebhookTemplates | None = None

    def for_channel(self, channel: str) -> object | None:
        return getattr(self, channel.lower(), None) if channel in CHANNELS else None

    def channels(self) -> tuple[str, ...]:
        """The channels that have content, in CHANNELS order."""
        return tuple(channel for channel in CHANNELS if self.for_channel(channel) is not None)

    def other_channels_json(self) -> dict[str, Any]:
        """SMS, WhatsApp, push and webhook content as stored (e-mail has its own columns)."""
        stored: dict[str, Any] = {}
        for name in ("sms", "whatsapp", "push", "webhook"):
            value = getattr(self, name)
            if value is not None:
                stored[name] = asdict(value)
        return stored

    @staticmethod
    def from_stored(email: EmailTemplates | None, stored: Mapping[str, Any] | None) -> "ContentTemplates":
        stored = stored or {}
        whatsapp = stored.get("whatsapp")
        return ContentTemplates(
            email=email,
            sms=SmsTemplates(**stored["sms"]) if "sms" in stored else None,
            whatsapp=(
                WhatsAppTemplates(
                    whatsapp["template_name"], whatsapp["language_code"], tuple(whatsapp["parameter_templates"])
                )
                if whatsapp
                else None
            ),
            push=PushTemplates(**stored["push"]) if "push" in stored else None,
            webhook=WebhookTemplates(**stored["webhook"]) if "webhook" in stored else None,
        )


# ---- compiled, per channel -----------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledSms:
    sender_id: str
    dlt_template_id: str
    body: CompiledTemplate
    registered: DltTemplate | None


@dataclass(frozen=True)
class CompiledWhatsApp:
    template_name: str
    language_code: str
    parameters: tuple[CompiledTemplate, ...]


@dataclass(frozen=True)
class CompiledPush:
    title: CompiledTemplate
    body: CompiledTemplate
    deep_link: CompiledTemplate | None


@dataclass(frozen=True)
class CompiledWebhook:
    url: str
    payload: CompiledTemplate


@dataclass(frozen=True)
class RenderedSms:
    sender_id: str
    dlt_template_id: str
    body: str


@dataclass(frozen=True)
class RenderedWhatsApp:
    template_name: str
    language_code: str
    parameters: tuple[str, ...]


@dataclass(frozen=True)
class RenderedPush:
    title: str
    body: str
    deep_link: str


@dataclass(frozen=True)
class RenderedWebhook:
    url: str
    payload_json: str


Compiled = CompiledEmail | CompiledSms | CompiledWhatsApp | CompiledPush | CompiledWebhook
Rendered = RenderedEmail | RenderedSms | RenderedWhatsApp | RenderedPush | RenderedWebhook


def _required(value: str, field_path: str, example: str) -> None:
    if not value.strip():
        raise InvalidArgument(f"{field_path.rsplit('.', 1)[-1]} is required, e.g. {example}", field=field_path)


def _dlt_shape(parsed: nodes.Template) -> str | None:
    """The DLT text a body of plain text and {{ }} expressions makes, each expression as {#var#}.

    None when the body has statements ({% if %}...): only its renders can be compared then.
    """
    parts: list[str] = []
    for statement in parsed.body:
        if not isinstance(statement, nodes.Output):
            return None
        for node in statement.nodes:
            parts.append(node.data if isinstance(node, nodes.TemplateData) else DLT_VARIABLE)
    return "".join(parts)


def _compile_sms(templates: SmsTemplates, registry: TemplateRegistry, check: bool) -> tuple[CompiledSms, set[str]]:
    base = f"{CONTENT_FIELD}.sms"
    _required(templates.dlt_template_id, f"{base}.dlt_template_id", "'1107161234567890123'")
    _required(templates.sender_id, f"{base}.sender_id", "'FUNDSY'")
    _required(templates.body_template, f"{base}.body_template", "'Dear {{ first_name }}, ...'")
    environment = template_environment(html=False)
    body, names = compile_template(environment, templates.body_template, f"{base}.body_template")
    registered = registry.sms.get(templates.dlt_template_id)
    if check:
        if registered is None:
            raise InvalidArgument(
                f"dlt_template_id {templates.dlt_template_id!r} is not a registered DLT template; register "
                "it on the DLT platform and add it to the template registry (XSELL_CAMPAIGNS_TEMPLATE_REGISTRY_FILE), "
                "or use one of: " + (", ".join(sorted(registry.sms)) or "(none registered)"),
                field=f"{base}.dlt_template_id",
            )
        if templates.sender_id not in registered.sender_ids:
            raise InvalidArgument(
                f"sender_id {templates.sender_id!r} is not registered for DLT template "
                f"{templates.dlt_template_id}; use one of: {', '.join(sorted(registered.sender_ids))}",
                field=f"{base}.sender_id",
            )
        shape = _dlt_shape(environment.parse(templates.body_template))
        # Each expression stands in as one character: it must sit where the registered text has a variable.
        if shape is not None and not registered.matches(shape.replace(DLT_VARIABLE, "x")):
            raise InvalidArgument(
                f"body_template does not follow DLT template {templates.dlt_template_id}, whose registered "
                f"text is {registered.text!r}: write that text with each {DLT_VARIABLE} replaced by one "
                "{{ ... }} expression (the operator drops any SMS that differs)",
                field=f"{base}.body_template",
            )
    return CompiledSms(templates.sender_id, templates.dlt_template_id, body, registered), names


def _compile_whatsapp(
    templates: WhatsAppTemplates, registry: TemplateRegistry, check: bool
) -> tuple[CompiledWhatsApp, set[str]]:
    base = f"{CONTENT_FIELD}.whatsapp"
    _required(templates.template_name, f"{base}.template_name", "'lumpsum_offer_v2'")
    language = templates.language_code or "en"
    environment = template_environment(html=False)
    compiled: list[CompiledTemplate] = []
    names: set[str] = set()
    for index, source in enumerate(templates.parameter_templates):
        path = f"{base}.parameter_templates[{index}]"
        _required(source, path, "'{{ first_name }}'")
        template, referenced = compile_template(environment, source, path)
        compiled.append(template)
        names |= referenced
    if check:
        registered = registry.whatsapp.get((templates.template_name, language))
        if registered is None:
            known = ", ".join(f"{name} ({lang})" for name, lang in sorted(registry.whatsapp)) or "(none registered)"
            raise InvalidArgument(
                f"template_name {templates.template_name!r} in language {language!r} is not an approved "
                "WhatsApp template; get it approved in WhatsApp Business Manager and add it to the template registry "
                f"(XSELL_CAMPAIGNS_TEMPLATE_REGISTRY_FILE), or use one of: {known}",
                field=f"{base}.template_name",
            )
        if registered.parameter_count != len(compiled):
            raise InvalidArgument(
                f"parameter_templates has {len(compiled)} entries but template "
                f"{templates.template_name} ({language}) has {registered.parameter_count} body parameters "
                f"({{{{1}}}}...); give exactly {registered.parameter_count}, in order",
                field=f"{base}.parameter_templates",
            )
    return CompiledWhatsApp(templates.template_name, language, tuple(compiled)), names


def _compile_push(templates: PushTemplates) -> tuple[CompiledPush, set[str]]:
    base = f"{CONTENT_FIELD}.push"
    _required(templates.title_template, f"{base}.title_template", "'{{ first_name }}, a lumpsum idea'")
    _required(templates.body_template, f"{base}.body_template", "'Markets offer attractive entry points...'")
    environment = template_environment(html=False)
    title, title_names = compile_template(environment, templates.title_template, f"{base}.title_template")
    body, body_names = compile_template(environment, templates.body_template, f"{base}.body_template")
    deep_link: CompiledTemplate | None = None
    link_names: set[str] = set()
    if templates.deep_link_template.strip():
        deep_link, link_names = compile_template(
            environment, templates.deep_link_template, f"{base}.deep_link_template"
        )
    return CompiledPush(title, body, deep_link), title_names | body_names | link_names


def _compile_webhook(templates: WebhookTemplates) -> tuple[CompiledWebhook, set[str]]:
    base = f"{CONTENT_FIELD}.webhook"
    url = urlsplit(templates.url.strip())
    if url.scheme != "https" or not url.hostname:
        raise InvalidArgument(
            "url must be an https:// URL of the institution's system, e.g. 'https://crm.example/hooks/xsell'",
            field=f"{base}.url",
        )
    _required(templates.payload_template, f"{base}.payload_template", "'{\"profile\": {{ first_name | tojson }}}'")
    payload, names = compile_template(
        template_environment(html=False), templates.payload_template, f"{base}.payload_template"
    )
    return CompiledWebhook(templates.url.strip(), payload), names


def channel_order(channel: str, fallback_channels: Sequence[str]) -> tuple[str, ...]:
    """The campaign's channel, then its fallbacks; InvalidArgument on an unknown or repeated channel."""
    if channel not in CHANNELS:
        raise InvalidArgument(
            f"channel CHANNEL_{channel} is not a channel; use one of "
            + ", ".join(f"CHANNEL_{name}" for name in CHANNELS),
            field="campaign.channel",
        )
    order = [channel]
    for index, fallback in enumerate(fallback_channels):
        if fallback not in CHANNELS:
            raise InvalidArgument(
                f"fallback_channels[{index}] CHANNEL_{fallback} is not a channel",
                field=f"campaign.fallback_channels[{index}]",
            )
        if fallback in order:
            raise InvalidArgument(
                f"fallback_channels[{index}] CHANNEL_{fallback} is already tried before it; list each channel once",
                field=f"campaign.fallback_channels[{index}]",
            )
        order.append(fallback)
    return tuple(order)


def unavailable_reason(channel: str, attributes: Mapping[str, object]) -> str | None:
    """Why the person cannot be reached on `channel` (naming the attribute, never its value); None if they can."""
    if channel == "EMAIL":
        email = attributes.get(EMAIL_ATTRIBUTE)
        return None if isinstance(email, str) and "@" in email.strip() else "no email attribute"
    if channel in ("SMS", "WHATSAPP"):
        phone = attributes.get(PHONE_ATTRIBUTE)
        if not isinstance(phone, str) or not phone.strip():
            return "no phone attribute"
        if not E164.match(phone.strip()):
            return "phone attribute is not an E.164 number (+919812345678)"
        if channel == "WHATSAPP" and attributes.get(WHATSAPP_OPT_IN_ATTRIBUTE) is not True:
            return "whatsapp_opt_in attribute is not true"
        return None
    if channel == "PUSH":
        token = attributes.get(PUSH_TOKEN_ATTRIBUTE)
        return None if isinstance(token, str) and token.strip() else "no push_token attribute"
    if channel == "WEBHOOK":
        return None
    return f"unknown channel {channel}"


def contact_address(channel: str, attributes: Mapping[str, object]) -> str:
    """The address a reachable person is sent to on `channel` ("" for webhooks)."""
    attribute = CONTACT_ATTRIBUTES[channel][0] if CONTACT_ATTRIBUTES[channel] else None
    return str(attributes[attribute]).strip() if attribute else ""


@dataclass(frozen=True)
class CompiledContent:
    """Every channel's templates compiled once, the channel order, and the attributes the templates use."""

    channels: Mapping[str, Compiled]
    order: tuple[str, ...]
    referenced_names: frozenset[str]

    @property
    def uses_recommendations(self) -> bool:
        return "recommendations" in self.referenced_names

    def attribute_names(self) -> list[str]:
        """The attributes to fetch per person: those the templates use, the contacts of the order, and the basics."""
        wanted = {name for name in self.referenced_names if name not in RESERVED_NAMES}
        wanted |= set(ALWAYS_FETCHED_ATTRIBUTES)
        for channel in self.order:
            wanted |= set(CONTACT_ATTRIBUTES[channel])
        if self.uses_recommendations:
            wanted |= {HELD_CATEGORIES_ATTRIBUTE, TIER_ATTRIBUTE}
        return sorted(wanted)

    def choose_channel(self, attributes: Mapping[str, object]) -> str | None:
        """The first channel of the order the person can be reached on; None when there is none."""
        for channel in self.order:
            if unavailable_reason(channel, attributes) is None:
                return channel
        return None

    def context(
        self, attributes: Mapping[str, object], campaign_id: str, offer: Offer, catalog: ProductCatalog
    ) -> dict[str, Any]:
        recommendations = (
            [product.template_value() for product in catalog.recommend(attributes)] if self.uses_recommendations else []
        )
        return build_context(attributes, campaign_id, offer, recommendations)

    def render(self, channel: str, context: Mapping[str, Any]) -> Rendered:
        """One person's message on `channel`; RenderFailed names what went wrong, never the person's values."""
        compiled = self.channels[channel]
        if isinstance(compiled, CompiledEmail):
            return render_email(compiled, context)
        if isinstance(compiled, CompiledSms):
            body = render_template(compiled.body, context).strip()
            if compiled.registered is None:
                raise RenderFailed(f"DLT template {compiled.dlt_template_id} is no longer registered")
            if not compiled.registered.matches(body):
                raise RenderFailed(
                    f"the SMS does not match DLT template {compiled.dlt_template_id} "
                    f"(each variable may fill at most {DLT_VARIABLE_MAX_CHARS} characters)"
                )
            return RenderedSms(compiled.sender_id, compiled.dlt_template_id, body)
        if isinstance(compiled, CompiledWhatsApp):
            # WhatsApp refuses parameters with line breaks, tabs or runs of spaces, and empty ones.
            parameters = tuple(_squash(render_template(template, context)) for template in compiled.parameters)
            for index, parameter in enumerate(parameters):
                if not parameter:
                    raise RenderFailed(f"WhatsApp parameter {index + 1} renders empty")
            return RenderedWhatsApp(compiled.template_name, compiled.language_code, parameters)
        if isinstance(compiled, CompiledPush):
            deep_link = render_template(compiled.deep_link, context).strip() if compiled.deep_link else ""
            title = _squash(render_template(compiled.title, context))
            body = render_template(compiled.body, context).strip()
            if not title or not body:
                # A blank notification is worse than none.
                raise RenderFailed(f"the push {'title' if not title else 'body'} renders empty")
            return RenderedPush(title, body, deep_link)
        payload = render_template(compiled.payload, context)
        try:
            document = json.loads(payload)
        except ValueError as error:
            raise RenderFailed(
                f"the webhook payload is not JSON (line {error.lineno if hasattr(error, 'lineno') else '?'}); "
                "write string values with | tojson"
            ) from error
        if not isinstance(document, dict):
            raise RenderFailed("the webhook payload must be a JSON object")
        return RenderedWebhook(compiled.url, json.dumps(document, ensure_ascii=False, separators=(",", ":")))


def compile_content(
    templates: ContentTemplates,
    order: Sequence[str],
    *,
    offer_has_amount: bool,
    registry: TemplateRegistry,
    check_registry: bool = True,
) -> CompiledContent:
    """Compiles every channel that has content; InvalidArgument names the field path and the fix.

    Each channel of `order` (the campaign's channel and its fallbacks) needs content. The registry
    is checked when a campaign is saved or submitted (`check_registry`); at release a template that
    was deregistered meanwhile fails each render instead, so nothing unregistered is ever sent.
    """
    for channel in order:
        if templates.for_channel(channel) is None:
            path = f"{CONTENT_FIELD}.{channel.lower()}"
            why = "the campaign's channel" if channel == order[0] else "a fallback channel"
            raise InvalidArgument(
                f"{channel.lower()} content is required: CHANNEL_{channel} is {why}; "
                "add its content or remove the channel",
                field=path,
            )
    compiled: dict[str, Compiled] = {}
    names: set[str] = set()
    if templates.email is not None:
        email = compile_email(templates.email, offer_has_amount=offer_has_amount)
        compiled["EMAIL"] = email
        names |= email.referenced_names
    if templates.sms is not None:
        compiled["SMS"], found = _compile_sms(templates.sms, registry, check_registry)
        names |= found
    if templates.whatsapp is not None:
        compiled["WHATSAPP"], found = _compile_whatsapp(templates.whatsapp, registry, check_registry)
        names |= found
    if templates.push is not None:
        compiled["PUSH"], found = _compile_push(templates.push)
        names |= found
    if templates.webhook is not None:
        compiled["WEBHOOK"], found = _compile_webhook(templates.webhook)
        names |= found
    if not offer_has_amount and names & {"offer_amount", "offer_amount_full"}:
        raise InvalidArgument(
            "the templates use offer_amount but the offer has no amount; set campaign.offer.amount (the same for "
            "everyone) or campaign.offer.amount_rule (each person's), or remove offer_amount from the templates",
            field="campaign.offer.amount",
        )
    return CompiledContent(compiled, tuple(order), frozenset(names))


def _template_fields(templates: ContentTemplates) -> Iterable[tuple[str, str]]:
    """(field path, source) of every template, in the order a reader meets them."""
    if templates.email is not None:
        base = f"{CONTENT_FIELD}.email"
        yield f"{base}.subject_template", templates.email.subject_template
        yield f"{base}.html_template", templates.email.html_template
        yield f"{base}.text_template", templates.email.text_template
    if templates.sms is not None:
        yield f"{CONTENT_FIELD}.sms.body_template", templates.sms.body_template
    if templates.whatsapp is not None:
        for index, source in enumerate(templates.whatsapp.parameter_templates):
            yield f"{CONTENT_FIELD}.whatsapp.parameter_templates[{index}]", source
    if templates.push is not None:
        yield f"{CONTENT_FIELD}.push.title_template", templates.push.title_template
        yield f"{CONTENT_FIELD}.push.body_template", templates.push.body_template
        yield f"{CONTENT_FIELD}.push.deep_link_template", templates.push.deep_link_template
    if templates.webhook is not None:
        yield f"{CONTENT_FIELD}.webhook.payload_template", templates.webhook.payload_template


def check_attributes(templates: ContentTemplates, known_attributes: Collection[str]) -> None:
    """Every name a template reads is an attribute in segments' catalog or a name the service provides.

    InvalidArgument names the first template field with an unknown name, and the closest known names.
    """
    known = set(known_attributes) | RESERVED_NAMES
    for path, source in _template_fields(templates):
        if not source.strip():
            continue
        environment = template_environment(html=path.endswith("html_template"))
        _, referenced = compile_template(environment, source, path)
        unknown = sorted(referenced - known)
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InvalidArgument(
                f"the template uses {name!r}, which is not an attribute in the segments catalog{hint}; fix the name, "
                "or declare the attribute with DefineAttributes before using it. Names the service provides: "
                + ", ".join(sorted(RESERVED_NAMES)),
                field=path,
            )
