"""Campaign content: INR formatting, sandboxed template compilation and per-person rendering."""

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal, NamedTuple

import jinja2
import markupsafe
from jinja2 import meta, nodes
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
    SandboxedEnvironment,
)

from plumbing.errors import InvalidArgument

UNSUBSCRIBE_URL = "xsell:unsubscribe"
"""What {{ unsubscribe_url }} renders as.

The contract with channels: campaigns never knows the public URL or the signing secret, so it
renders this pseudo-URL; at dispatch, channels replaces every occurrence of `xsell:unsubscribe`
with a signed unsubscribe link for the outreach's campaign ID, just as it rewrites every
http(s) link into a click-tracking link. Nothing else in a rendered body uses the `xsell:` scheme.
"""

CONTENT_FIELD = "campaign.content.email"
_UNSUBSCRIBE_PLACEHOLDER = re.compile(r"\{\{-?\s*unsubscribe_url\s*-?\}\}")

# Names the service puts in every context; member attributes of the same name are shadowed.
RESERVED_NAMES = frozenset(
    {
        "first_name",
        "campaign_id",
        "offer",
        "offer_amount",
        "offer_amount_full",
        "unsubscribe_url",
        "recommendations",
    }
)
MAX_TEMPLATE_CHARS = 64_000
# Attribute names a template may never reach, on top of anything starting with "_": the sandbox
# refuses them at render time; refusing them when the campaign is saved says so before anything is sent.
_UNSAFE_ATTRIBUTES = frozenset(
    UNSAFE_FUNCTION_ATTRIBUTES
    | UNSAFE_METHOD_ATTRIBUTES
    | UNSAFE_GENERATOR_ATTRIBUTES
    | UNSAFE_COROUTINE_ATTRIBUTES
    | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
    | {"mro", "format_map"}
)
# Attributes asked of segments for every person, whatever the templates say.
ALWAYS_FETCHED_ATTRIBUTES = ("email", "first_name", "time_zone")

_PAISE_PER_RUPEE = 100
_PAISE_PER_LAKH = 100_000 * _PAISE_PER_RUPEE
_PAISE_PER_CRORE = 10_000_000 * _PAISE_PER_RUPEE
_TWO_PLACES = Decimal("0.01")


@dataclass(frozen=True)
class Money:
    """An amount in integer minor units (paise for INR) and its ISO 4217 currency."""

    minor_units: int
    currency_code: str


def _group_indian(whole: int) -> str:
    """12345678 -> "1,23,45,678": the last three digits, then groups of two (lakh and crore)."""
    digits = str(whole)
    if len(digits) <= 3:
        return digits
    head, tail = digits[:-3], digits[-3:]
    groups: list[str] = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    if head:
        groups.insert(0, head)
    return ",".join([*groups, tail])


def _short_decimal(value: Decimal) -> str:
    """Two decimals at most, without trailing zeros: 17.40 -> "17.4", 1.00 -> "1"."""
    text = f"{value.quantize(_TWO_PLACES, rounding=ROUND_HALF_UP):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_inr(paise: int, style: Literal["compact", "grouped"] = "compact") -> str:
    """Rupees the Indian way.

    - "grouped": ₹17,40,000 (lakh/crore digit grouping), with paise only when there are some: ₹1,234.50;
    - "compact": ₹17.4 lakh, ₹1.24 crore (two decimals at most); amounts under a lakh are grouped
      whole rupees, e.g. ₹45,000.
    """
    sign = "-" if paise < 0 else ""
    paise = abs(paise)
    if style == "grouped":
        rupees, rest = divmod(paise, _PAISE_PER_RUPEE)
        fraction = f".{rest:02d}" if rest else ""
        return f"{sign}₹{_group_indian(rupees)}{fraction}"
    if style != "compact":
        raise ValueError(f"unknown INR style {style!r}; use 'compact' or 'grouped'")
    lakhs = (Decimal(paise) / _PAISE_PER_LAKH).quantize(_TWO_PLACES, rounding=ROUND_HALF_UP)
    if paise >= _PAISE_PER_CRORE or lakhs >= 100:
        return f"{sign}₹{_short_decimal(Decimal(paise) / _PAISE_PER_CRORE)} crore"
    if paise >= _PAISE_PER_LAKH:
        return f"{sign}₹{_short_decimal(lakhs)} lakh"
    rupees = int((Decimal(paise) / _PAISE_PER_RUPEE).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return f"{sign}₹{_group_indian(rupees)}"


def format_money(money: Money, style: Literal["compact", "grouped"] = "grouped") -> str:
    """INR the Indian way; other currencies as "USD 1,234.50"."""
    if money.currency_code == "INR":
        return format_inr(money.minor_units, style)
    return f"{money.currency_code} {Decimal(money.minor_units) / _PAISE_PER_RUPEE:,.2f}"


class Rupees:
    """A money attribute inside a template: prints with Indian grouping (₹4,52,400); `| inr` makes it compact.

    `.paise` and `.rupees` let a template compare amounts, e.g. {% if total_aum.rupees >= 1000000 %}.
    """

    __slots__ = ("money",)

    def __init__(self, money: Money) -> None:
        self.money = money

    @property
    def paise(self) -> int:
        return self.money.minor_units

    @property
    def rupees(self) -> int:
        return self.money.minor_units // _PAISE_PER_RUPEE

    def __str__(self) -> str:
        return format_money(self.money, "grouped")

    def __html__(self) -> str:
        return str(markupsafe.escape(str(self)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rupees) and other.money == self.money

    def __hash__(self) -> int:
        return hash(self.money)


class FilterFailed(Exception):
    """A template filter got a value it cannot format; the message names the filter, never the value."""


def _as_money(value: object, filter_name: str) -> Money:
    """Rupees/Money as they are; plain numbers are rupees (45240 -> ₹45,240)."""
    if isinstance(value, Rupees):
        return value.money
    if isinstance(value, Money):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise FilterFailed(
            f"the {filter_name} filter needs an amount or a number of rupees, not a {type(value).__name__}"
        )
    paise = (Decimal(str(value)) * _PAISE_PER_RUPEE).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return Money(int(paise), "INR")


def inr_filter(value: object) -> str:
    """{{ total_aum | inr }}: ₹17.4 lakh, ₹1.24 crore, ₹45,240 (whole rupees below a lakh)."""
    return format_money(_as_money(value, "inr"), "compact")


def inr_full_filter(value: object) -> str:
    """{{ total_aum | inr_full }}: every rupee with Indian digit grouping, ₹4,52,400."""
    return format_money(_as_money(value, "inr_full"), "grouped")


TEMPLATE_FILTERS = {"inr": inr_filter, "inr_full": inr_full_filter}


@dataclass(frozen=True)
class EmailTemplates:
    """The e-mail content of a campaign as the marketer wrote it."""

    subject_template: str
    html_template: str
    text_template: str
    from_name: str


class CompiledTemplate:
    """One template compiled once per run, rendered per person.

    A template that only prints text and names (`Dear {{ first_name }}, ...`, most subjects and many bodies) is
    rendered by joining its text with the names' values, converted exactly as Jinja's generated code converts them
    (markupsafe's escape when autoescaping, str otherwise); Jinja's per-render context and generator were most of
    a render. Anything else, and any name the context lacks (so StrictUndefined fails it the usual way), goes
    through Jinja.
    """

    __slots__ = ("_convert", "_convert_text", "_names", "_outputs", "_texts", "jinja")

    def __init__(self, template: jinja2.Template, parsed: nodes.Template, *, autoescape: bool) -> None:
        self.jinja = template
        plan = _text_and_names(parsed)
        self._texts: tuple[str, ...] = plan[0] if plan is not None else ()
        self._names: tuple[str, ...] | None = plan[1] if plan is not None else None
        # Each name with the text that follows its value.
        self._outputs = tuple(zip(self._names or (), self._texts[1:], strict=True))
        self._convert: Callable[[Any], str] = markupsafe.escape if autoescape else str
        # A plain str value, most of them: escaped as markupsafe.escape escapes a str, without making a Markup of
        # it only to join it (a third of a render), or kept as it is (str() of a str is itself).
        self._convert_text: Callable[[str], str] | None = escape_text if autoescape else None

    def render(self, context: Mapping[str, Any]) -> str:
        if self._names is None:
            return self.jinja.render(context)
        convert, convert_text = self._convert, self._convert_text
        pieces = [self._texts[0]]
        for name, text in self._outputs:
            value = context.get(name, _ABSENT)
            if value is _ABSENT:
                return self.jinja.render(context)
            if type(value) is not str:
                value = convert(value)
            elif convert_text is not None:
                value = convert_text(value)
            pieces.append(value)
            pieces.append(text)
        return "".join(pieces)


def escape_text(text: str) -> str:
    """What markupsafe.escape makes of a str, as a str: its five replacements, in its order (markupsafe._native)."""
    return (
        text.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;").replace("'", "&#39;").replace('"', "&#34;")
    )


_ABSENT = object()


def _text_and_names(parsed: nodes.Template) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(texts, names) with texts[0] + value of names[0] + texts[1] + ... being the template's output, when the
    template is only literal text and {{ name }} outputs; None otherwise."""
    texts, names, current = [], [], ""
    for statement in parsed.body:
        if not isinstance(statement, nodes.Output):
            return None
        for node in statement.nodes:
            if isinstance(node, nodes.TemplateData):
                current += node.data
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                texts.append(current)
                names.append(node.name)
                current = ""
            else:
                return None
    texts.append(current)
    return tuple(texts), tuple(names)


@dataclass(frozen=True)
class CompiledEmail:
    """Templates compiled once per campaign run, and the member attributes they reference."""

    subject: CompiledTemplate
    html: CompiledTemplate
    text: CompiledTemplate | None
    from_name: str
    referenced_names: frozenset[str]

    def attribute_names(self) -> list[str]:
        """The member attributes to fetch from segments: those the templates use, plus email and first_name."""
        wanted = {name for name in self.referenced_names if name not in RESERVED_NAMES}
        return sorted(wanted | set(ALWAYS_FETCHED_ATTRIBUTES))


class RenderedEmail(NamedTuple):
    """One person's e-mail (a named tuple: a release makes one per person, and a frozen dataclass's __init__
    costs three times as much)."""

    from_name: str
    subject: str
    html_body: str
    text_body: str


class RenderFailed(Exception):
    """One person's content could not be rendered; `reason` names the problem, never the person's data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def template_environment(*, html: bool) -> SandboxedEnvironment:
    # Sandboxed: templates are written by marketers and must not reach Python internals.
    # StrictUndefined: a missing attribute fails that person's render instead of sending "Dear ,".
    environment = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=html, keep_trailing_newline=True)
    environment.filters.update(TEMPLATE_FILTERS)
    return environment


def _unsafe_name(name: str) -> bool:
    return name.startswith("_") or name in _UNSAFE_ATTRIBUTES


def check_safe(parsed: nodes.Template, field: str) -> None:
    """Refuses what the sandbox would refuse at send time, and what has no place in campaign content.

    Python internals (any name starting with "_", function and frame attributes), and other
    templates (include, import, extends: there is no loader, and content must stand alone).
    """
    for node in parsed.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise InvalidArgument(
            f"the template uses {{% {type(node).__name__.lower()} %}} on line {node.lineno}; campaign content cannot "
            "include, import or extend other templates: write the content in this field",
            field=field,
        )
    for access in parsed.find_all((nodes.Getattr, nodes.Getitem)):
        name: object = None
        if isinstance(access, nodes.Getattr):
            name = access.attr
        elif isinstance(access, nodes.Getitem) and isinstance(access.arg, nodes.Const):
            name = access.arg.value
        if isinstance(name, str) and _unsafe_name(name):
            raise InvalidArgument(
                f"the template reaches {name!r} on line {access.lineno}, which templates may not use (names starting "
                "with '_' and Python internals are refused by the sandbox); use the person's attributes by name, "
                "e.g. {{ first_name }}",
                field=field,
            )


def compile_template(environment: SandboxedEnvironment, source: str, field: str) -> tuple[CompiledTemplate, set[str]]:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise InvalidArgument(
            f"the template is {len(source)} characters long; templates may have at most {MAX_TEMPLATE_CHARS}",
            field=field,
        )
    try:
        parsed = environment.parse(source)
        check_safe(parsed, field)
        template = environment.from_string(parsed)
    except jinja2.TemplateSyntaxError as error:
        # Includes unknown filters ("No filter named 'inrr'"), which jinja reports at compile time.
        raise InvalidArgument(
            f"the template has a syntax error on line {error.lineno}: {error.message}; "
            "fix the Jinja syntax ({{ variable }}, {% if %}...{% endif %}, filters inr and inr_full)",
            field=field,
        ) from error
    referenced = meta.find_undeclared_variables(parsed) - set(environment.globals)
    # Jinja keeps a template's globals as a ChainMap and copies it into every render's context; flattened
    # once here, a render costs a third (nothing adds globals after compiling).
    template.globals = dict(template.globals)
    return CompiledTemplate(template, parsed, autoescape=bool(environment.autoescape)), referenced


def compile_email(templates: EmailTemplates, *, offer_has_amount: bool) -> CompiledEmail:
    """Validates and compiles the e-mail templates; InvalidArgument names the field and what to change."""
    if not templates.subject_template.strip():
        raise InvalidArgument("subject_template is required", field=f"{CONTENT_FIELD}.subject_template")
    if not templates.html_template.strip():
        raise InvalidArgument("html_template is required", field=f"{CONTENT_FIELD}.html_template")
    text_env, html_env = template_environment(html=False), template_environment(html=True)
    subject, subject_names = compile_template(text_env, templates.subject_template, f"{CONTENT_FIELD}.subject_template")
    html, html_names = compile_template(html_env, templates.html_template, f"{CONTENT_FIELD}.html_template")
    text: CompiledTemplate | None = None
    text_names: set[str] = set()
    if templates.text_template.strip():
        text, text_names = compile_template(text_env, templates.text_template, f"{CONTENT_FIELD}.text_template")
    if not _UNSUBSCRIBE_PLACEHOLDER.search(templates.html_template):
        raise InvalidArgument(
            "html_template must contain {{ unsubscribe_url }}: every marketing e-mail needs an unsubscribe "
            "link, and channels turns this placeholder into the person's signed unsubscribe link",
            field=f"{CONTENT_FIELD}.html_template",
        )
    referenced = frozenset(subject_names | html_names | text_names)
    if not offer_has_amount and referenced & {"offer_amount", "offer_amount_full"}:
        raise InvalidArgument(
            "the templates use offer_amount but the offer has no amount; set campaign.offer.amount (the same for "
            "everyone) or campaign.offer.amount_rule (each person's), or remove offer_amount from the templates",
            field="campaign.offer.amount",
        )
    return CompiledEmail(subject, html, text, templates.from_name, referenced)


@dataclass(frozen=True)
class Offer:
    """What a campaign offers."""

    product_code: str
    amount: Money | None = None


def _template_value(value: object) -> object:
    if isinstance(value, Money):
        return Rupees(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    return value


@functools.lru_cache(maxsize=256)
def offer_amount_texts(amount: Money) -> tuple[str, str]:
    """The offer amount compact and grouped (₹17.4 lakh, ₹17,40,000): the same for every person a run renders, so
    formatted once per amount rather than twice per person (Decimal arithmetic, ~10 µs)."""
    return format_money(amount, "compact"), format_money(amount, "grouped")


def build_context(
    attributes: Mapping[str, object],
    campaign_id: str,
    offer: Offer,
    recommendations: Sequence[Mapping[str, object]] = (),
) -> dict[str, Any]:
    """The template context of one outreach.

    Member attributes by name (string sets as sorted lists, money as Rupees that print as
    ₹4,52,400, whole numbers as ints), then the names the service provides, which shadow attributes
    of the same name. first_name is "" when unknown so templates can write {{ first_name or "Investor" }};
    recommendations are the products chosen for the person (see products.py).
    """
    # Strings, most attributes, are kept as they are without _template_value's checks.
    context: dict[str, Any] = {
        name: value if type(value) is str else _template_value(value) for name, value in attributes.items()
    }
    first_name = attributes.get("first_name")
    offer_context: dict[str, Any] = {"product_code": offer.product_code}
    context["first_name"] = first_name if isinstance(first_name, str) else ""
    context["campaign_id"] = campaign_id
    context["unsubscribe_url"] = UNSUBSCRIBE_URL
    context["offer"] = offer_context
    context["recommendations"] = [dict(product) for product in recommendations] if recommendations else []
    if offer.amount is not None:
        context["offer_amount"], context["offer_amount_full"] = offer_amount_texts(offer.amount)
        offer_context["amount"] = context["offer_amount"]
    return context


def render_template(template: CompiledTemplate, context: Mapping[str, Any]) -> str:
    """One template for one person; RenderFailed names what went wrong, never the person's values."""
    try:
        return template.render(context)
    except jinja2.UndefinedError as error:
        # The message names the missing variable ("'city' is undefined"), never a value.
        raise RenderFailed(f"undefined: {error.message}") from error
    except FilterFailed as error:
        raise RenderFailed(str(error)) from error
    except jinja2.exceptions.SecurityError as error:
        raise RenderFailed("the sandbox refused an unsafe operation") from error
    # A template is marketer code: one person's failure, whatever it is, must not stop the run.
    except Exception as error:
        # Only the type: other messages may quote the person's values.
        raise RenderFailed(type(error).__name__) from error


def render_email(compiled: CompiledEmail, context: Mapping[str, Any]) -> RenderedEmail:
    """One person's e-mail; RenderFailed when the template needs something the person lacks."""
    # A subject is a single header line: collapse any newline a template might produce.
    subject = " ".join(render_template(compiled.subject, context).split())
    html = render_template(compiled.html, context)
    text = render_template(compiled.text, context) if compiled.text is not None else ""
    return RenderedEmail(from_name=compiled.from_name, subject=subject, html_body=html, text_body=text)
