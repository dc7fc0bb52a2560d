"""structlog JSON logs with trace ids and campaign.id, and personal data redacted before anything is written."""

import functools
import logging
import re
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from opentelemetry import trace

REDACTED = "[redacted]"

# Where an e-mail address ends in text (and what may precede one): whitespace, brackets, quotes, separators, a slash.
_ADDRESS_ENDS = r"\s@＠﹫<>()\[\]{},;:\"'=`|\\/"
_ADDRESS_CANDIDATE = re.compile(
    # Anything@anything between those ends: an internationalised address ("प्रिया@उदाहरण.भारत"), a full-width "＠", a
    # quoted local part ("priya k"@example.in). Linear: a match starts only where a token starts (the lookbehind), and
    # its parts are taken possessively, so a long run without an "@" is read once, not once from each of its
    # characters. Whether the domain is one is decided after (replace_addresses), not by backtracking.
    rf'(?:"[^"\r\n]{{1,64}}"|(?<![^{_ADDRESS_ENDS}])[^{_ADDRESS_ENDS}]++)[@＠﹫](?P<domain>[^{_ADDRESS_ENDS}]++)'
)


def replace_addresses(text: str, replacement: str) -> str:
    """The text with every e-mail address replaced; shared by the logs and channels' provider texts. An address's
    domain has a dot and ends in a label of two or more characters without a digit ("example.co.in", "उदाहरण.भारत"),
    so "pkg@1.2.3", "durable@v2" or an image's "@sha256" digest are kept. A sentence's full stop after it is kept."""

    def replaced(found: re.Match[str]) -> str:
        whole = found.group(0)
        domain = found.group("domain").rstrip(".")
        label = domain.rpartition(".")[2]
        if "." not in domain or len(label) < 2 or any(char.isdigit() for char in label):
            return whole
        return replacement + whole[len(whole.rstrip(".")) :]

    return _ADDRESS_CANDIDATE.sub(replaced, text)


DASHES = r"\-\u2010-\u2015\u2212\u2e3a\u2e3b\ufe58\ufe63\uff0d"
"""Every dash, as the inside of a character class: hyphen-minus, Unicode's hyphens and non-breaking hyphen, figure,
en and em dashes, horizontal bar, minus sign, two- and three-em dashes, and the small and full-width ones."""
NUMBER_SEPARATORS = rf"\s{DASHES}\u00ad\u200b-\u200d\u2060\ufeff"
"""What may stand between the digits of one phone or account number, as the inside of a character class: any
whitespace (a non-breaking, thin or narrow no-break space, a tab, a line break: `\\s` is Unicode's), any dash, and
the characters that show nothing (soft hyphen, zero-width space and joiners, word joiner, byte order mark). Shared
with channels' `scrub`."""

_BETWEEN = rf"{NUMBER_SEPARATORS}()\uff08\uff09"

INTERNATIONAL_NUMBER = re.compile(
    # A "+" then at least 8 digits with at most 3 separators or brackets between any two ("+1 (555) 010-9999",
    # "+44 20 7946 0958", "+91\u00a098765\u201343210"; the plus and brackets may be full-width); a time zone ("+05:30")
    # or a signed figure ("+12.345678": no dots) is not one. Possessive, so a run that ends in a letter is not tried
    # again split another way.
    rf"(?<![\w+\uff0b])[+\uff0b](?=(?:[{_BETWEEN}]{{0,3}}\d){{8}})\d(?:[{_BETWEEN}]{{0,3}}\d)*+(?![\w])"
)
INDIAN_MOBILE = re.compile(
    # With or without +91 / 0, and up to 3 separators after it and in the middle ("98765 - 43210"). Bounded: each
    # start reads at most 23 characters.
    rf"(?<![\w])(?:[+\uff0b]?91[{NUMBER_SEPARATORS}]{{0,3}}|0)?[6-9]\d{{4}}[{NUMBER_SEPARATORS}]{{0,3}}\d{{5}}(?![\w])"
)

# Order matters: e-mail first (its digits must not be half-matched), then international and Indian phone numbers,
# PAN, account. Each is linear in the text's length: a log line may carry whatever a caller sent.
_REDACTIONS: list[Callable[[str], str]] = [
    lambda text: replace_addresses(text, REDACTED),
    *(
        functools.partial(pattern.sub, REDACTED)
        for pattern in (
            INTERNATIONAL_NUMBER,
            # PAN: five letters, four digits, one letter.
            re.compile(r"\b[A-Z]{5}[0-9]{4}[A-Z]\b"),
            INDIAN_MOBILE,
            # Bank account and card numbers: 9 to 19 digits, optionally grouped; not a part of a dashed identifier.
            re.compile(rf"(?<![\w{DASHES}])\d(?:[{NUMBER_SEPARATORS}]?\d){{8,18}}(?![\w{DASHES}])"),
        )
    ),
]


# What every redaction above needs somewhere in the text: an "@", or four digits, consecutive (a PAN's) or split by
# single separators (the start of a phone or account number). Most values of a log line (event names, levels,
# channel and provider names, durable names) have neither and are passed after this one search, not the five above.
_MAY_HOLD_PII = re.compile(rf"[@＠﹫]|\d(?:[{NUMBER_SEPARATORS}]?\d){{3}}")


def redact_text(text: str) -> str:
    """The text with e-mail addresses, phone, PAN and account numbers replaced."""
    if _MAY_HOLD_PII.search(text) is None:
        return text
    for redaction in _REDACTIONS:
        text = redaction(text)
    return text


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [_redact(item) for item in value]
    return value


def redact_pii(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """A structlog processor that redacts every string value, the event name included."""
    return {key: _redact(value) for key, value in event_dict.items()}


def add_trace_ids(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Adds the current span's trace_id and span_id so a log line leads to its trace."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def setup_logging(service: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Configures structlog (and stdlib logging through it) to write one JSON object per line."""
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        # Redaction runs before the timestamp and the ids are added: neither is personal data, trace ids are hex that
        # must not be mistaken for numbers, and a timestamp's digits would only send it through every pattern.
        redact_pii,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Library logs (grpc, nats, alembic, sqlalchemy) go through the same JSON pipeline.
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric_level, logging.INFO))
    for name in QUIETER_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _TlsCloseNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_TlsCloseNoise())


QUIETER_LIBRARY_LOGGERS = ("mail.log", "mail.debug")
"""Libraries whose INFO is traffic, not xsell's events: aiosmtpd (the gateway's bounce mailbox) logs every connection
and SMTP command (">> b'QUIT'", "Connection lost during _handle_client()"), a dozen lines per delivery report. Their
warnings and errors are kept."""


class _TlsCloseNoise(logging.Filter):
    """Drops asyncio's "returning true from eof_received() has no effect when using ssl": its stream protocol says so
    at every close of a TLS connection (nats.py's to NATS), a warning about asyncio itself, not about xsell."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("returning true from eof_received()")


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
