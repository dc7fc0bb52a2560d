"""Turns a rendered e-mail into the MIME message that is sent: tracked links, open pixel, unsubscribe headers."""

import binascii
import html
import json
import re
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.header import Header
from email.utils import format_datetime, formataddr
from functools import cached_property

from plumbing.signing import CLICK, OPEN, UNSUBSCRIBE, link_token
from services.channels.delivery import OutgoingEmail

UNSUBSCRIBE_PSEUDO_URL = "xsell:unsubscribe"
"""What campaigns renders for {{ unsubscribe_url }}; channels replaces it with the signed unsubscribe link."""

CAMPAIGN_ID_HEADER = "X-Xsell-Campaign-Id"
ESP_CAMPAIGN_ID = "xsell_campaign_id"
"""The name of the ESP's unique arg (SendGrid) or message tag (SES) that carries the campaign ID to its events."""
_SES_TAG_VALUE = re.compile(r"[A-Za-z0-9_.@-]{1,256}")
"""What SES allows in a message tag's value."""

_HREF = re.compile(
    r"""(?P<prefix>(?<![\w-])href\s*=\s*)(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"'<>`=]+))""", re.I
)
_TEXT_LINK = re.compile(rf"""(?P<unsub>{re.escape(UNSUBSCRIBE_PSEUDO_URL)})|(?P<url>\bhttps?://[^\s<>"'\]\[]+)""", re.I)
# A sentence's closing punctuation right after a URL in plain text is not part of the URL.
_TRAILING_PUNCTUATION = ".,;:!?)'\""
_BODY_END = re.compile(r"</body\s*>", re.I)
_VISIBLE_ASCII = re.compile(r"[!-~]+")
# The email package's Header fills a folded line to this length, its first-line prefix included; at 75 no
# encoded word exceeds RFC 2047's 75 characters (at its default, 76, one after a folding space does).
_ENCODED_LINE = 75
_QP_LINE = 76
"""RFC 2045's longest quoted-printable line, its soft line break included."""


@dataclass(frozen=True)
class TrackingLinks:
    """The signed links of one outreach, served by the gateway's HTTP edge."""

    base_url: str
    secret: str
    campaign_id: str

    def click(self, url: str) -> str:
        return f"{self.base_url.rstrip('/')}/c/{link_token(self.campaign_id, CLICK, self.secret, url)}"

    def unsubscribe(self) -> str:
        return f"{self.base_url.rstrip('/')}/u/{self._unsubscribe_token}"

    def open_pixel(self) -> str:
        return f"{self.base_url.rstrip('/')}/o/{link_token(self.campaign_id, OPEN, self.secret)}.gif"

    @cached_property
    def _unsubscribe_token(self) -> str:
        """Both bodies and the List-Unsubscribe header carry it: signed once."""
        return link_token(self.campaign_id, UNSUBSCRIBE, self.secret)


def _is_web_url(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _tracked(url: str, links: TrackingLinks) -> str | None:
    """The tracking link that replaces `url`, or None when the link stays as it is (mailto:, #anchor...)."""
    if url.strip().lower() == UNSUBSCRIBE_PSEUDO_URL:
        return links.unsubscribe()
    if _is_web_url(url.strip()):
        return links.click(url.strip())
    return None


def rewrite_html(body: str, links: TrackingLinks) -> str:
    """Every http(s) href wrapped in a click link; the unsubscribe pseudo-link made real."""

    def replace(match: re.Match[str]) -> str:
        quoted = match.group("dq") if match.group("dq") is not None else match.group("sq")
        raw = quoted if quoted is not None else match.group("bare")
        target = _tracked(_unescape(raw), links)
        if target is None:
            return match.group(0)
        return f'{match.group("prefix")}"{html.escape(target, quote=True)}"'

    return _HREF.sub(replace, body)


def rewrite_text(body: str, links: TrackingLinks) -> str:
    """Every URL in a plain-text body wrapped in a click link; the unsubscribe pseudo-link made real."""

    def replace(match: re.Match[str]) -> str:
        if match.group("unsub"):
            return links.unsubscribe()
        url = match.group("url")
        stripped = url.rstrip(_TRAILING_PUNCTUATION)
        return links.click(stripped) + url[len(stripped) :]

    return _TEXT_LINK.sub(replace, body)


def add_open_pixel(body: str, links: TrackingLinks) -> str:
    """The 1x1 open-tracking image, just before </body> when there is one, else at the end."""
    pixel = f'<img src="{html.escape(links.open_pixel(), quote=True)}" width="1" height="1" alt="">'
    ends = list(_BODY_END.finditer(body))
    if not ends:
        return body + pixel
    at = ends[-1].start()
    return body[:at] + pixel + body[at:]


def _text_to_html(text: str) -> str:
    """A minimal HTML part for a text-only e-mail, its URLs made into links so that they are tracked too."""

    def linkify(match: re.Match[str]) -> str:
        if match.group("unsub"):
            return f'<a href="{UNSUBSCRIBE_PSEUDO_URL}">unsubscribe</a>'
        url = match.group("url")
        stripped = url.rstrip(_TRAILING_PUNCTUATION)
        return f'<a href="{stripped}">{stripped}</a>' + url[len(stripped) :]

    escaped = html.escape(text, quote=False)
    return "<html><body><p>" + _TEXT_LINK.sub(linkify, escaped).replace("\n", "<br>\n") + "</p></body></html>"


_TAG = re.compile(r"<[^>]+>")


def _unescape(text: str) -> str:
    """html.unescape, whose ValueError for a decimal reference of over 4,300 digits (Python's limit on reading an int)
    would reach the message's reason as Python's own advice to raise the limit."""
    try:
        return html.unescape(text)
    except ValueError:
        raise ValueError(
            "email.html_body holds a character reference (&#...;) too long to be a character; write the character "
            "itself or a reference of at most 7 digits"
        ) from None


def _html_to_text(body: str) -> str:
    # _TAG alone is quadratic: from every "<" that no ">" follows it reads to the end (200,000 "<" held the event loop
    # 37 s). After the last ">" no tag can end, so that tail is kept as it is; before it every read stops at a ">".
    tags_end = body.rfind(">") + 1
    return _unescape(_TAG.sub("", body[:tags_end]) + body[tags_end:]).strip()


def message_id(campaign_id: str, domain: str) -> str:
    """The Message-ID is derived from the campaign ID, so a message can be found at the relay by its outreach."""
    return f"<{campaign_id}@{domain}>"


def compose(
    email: OutgoingEmail,
    *,
    campaign_id: str,
    from_address: str,
    message_id_domain: str,
    links: TrackingLinks,
    now: datetime,
    esp_events: str = "",
    ses_configuration_set: str = "",
) -> bytes:
    """The multipart/alternative message for one outreach as it goes on the wire (CRLF); ValueError if a header
    would be unsafe (CR/LF).

    Written directly rather than with the `email` package's EmailMessage: its structured headers are parsed
    on every set and folded again on every flatten, which was most of the CPU an e-mail cost. What is
    written is RFC 5322 / 2045-2047: ASCII headers folded at 78, others as RFC 2047 encoded words, both
    bodies UTF-8 quoted-printable (lines of at most 76 characters).
    """
    html_body = email.html_body if email.html_body.strip() else _text_to_html(email.text_body)
    text_body = email.text_body if email.text_body.strip() else _html_to_text(email.html_body)
    for field, value in (("to_address", email.to_address), ("from_name", email.from_name), ("subject", email.subject)):
        if "\r" in value or "\n" in value:
            raise ValueError(f"email.{field} contains a line break")
        if any((ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F for char in value):
            raise ValueError(f"email.{field} contains a control character")
    if _VISIBLE_ASCII.fullmatch(campaign_id) is None:
        # It is written as it is into X-Xsell-Campaign-Id and the Message-ID: a line break would add headers.
        raise ValueError("campaign_id must be visible ASCII characters only, as campaigns issues it")
    sender = _sender(email.from_name, from_address)
    boundary = f"=_xsell_{campaign_id.encode().hex()[:40]}_"
    headers = [
        ("From", sender),
        ("To", email.to_address),
        ("Subject", _header_text("Subject", email.subject)),
        ("Date", format_datetime(now)),
        ("Message-ID", message_id(campaign_id, message_id_domain)),
        (CAMPAIGN_ID_HEADER, campaign_id),
        # RFC 2369 / RFC 8058: mailbox providers show an unsubscribe button that POSTs to this link.
        ("List-Unsubscribe", f"<{links.unsubscribe()}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative;\r\n boundary="{boundary}"'),
    ]
    headers += esp_headers(esp_events, campaign_id, ses_configuration_set)
    lines = [f"{name}: {value}" for name, value in headers]
    for subtype, body in (
        ("plain", rewrite_text(text_body, links)),
        ("html", add_open_pixel(rewrite_html(html_body, links), links)),
    ):
        lines += [
            "",
            f"--{boundary}",
            f'Content-Type: text/{subtype}; charset="utf-8"',
            "Content-Transfer-Encoding: quoted-printable",
            "",
            _quoted_printable(body),
        ]
    lines += [f"--{boundary}--", ""]
    return "\r\n".join(lines).encode("ascii")


def esp_headers(esp_events: str, campaign_id: str, ses_configuration_set: str = "") -> list[tuple[str, str]]:
    """The headers by which an ESP (XSELL_CHANNELS_SMTP_ESP_EVENTS) names the outreach in every event it reports of
    the message; the ESP takes them off before it sends."""
    if esp_events == "sendgrid":
        # SendGrid gives every event of the message this unique arg (its Event Webhook).
        args = {"unique_args": {ESP_CAMPAIGN_ID: campaign_id}}
        return [("X-SMTPAPI", json.dumps(args, separators=(",", ":")))]
    if esp_events != "ses":
        return []
    headers = []
    if _SES_TAG_VALUE.fullmatch(campaign_id):
        # SES gives every event of the message this tag. It refuses a message whose tag holds another character, so
        # such an outreach goes untagged and its events name it by the Message-ID.
        headers.append(("X-SES-MESSAGE-TAGS", f"{ESP_CAMPAIGN_ID}={campaign_id}"))
    if ses_configuration_set:
        # The configuration set whose event destination publishes the events to the gateway's SNS topic.
        headers.append(("X-SES-CONFIGURATION-SET", ses_configuration_set))
    return headers


def _plain(value: str) -> bool:
    """True when a header value may be written without RFC 2047: ASCII, and no `=?` that a reader would decode."""
    return value.isascii() and "=?" not in value


def _header_text(name: str, value: str) -> str:
    """An unstructured header value folded at 78: as it is when plain, else RFC 2047 encoded words."""
    if _plain(value):
        if len(name) + 2 + len(value) <= 78:
            return value
        return Header(value, header_name=name).encode(linesep="\r\n", maxlinelen=_ENCODED_LINE)
    return Header(value, "utf-8", header_name=name).encode(linesep="\r\n", maxlinelen=_ENCODED_LINE)


def _sender(name: str, address: str) -> str:
    """The From value; a display name beyond ASCII as encoded words of at most 75 characters, folded at 78."""
    if not name:
        return address
    if _plain(name):
        return formataddr((name, address))
    header = Header(name, "utf-8", header_name="From")
    header.append(f"<{address}>", "us-ascii")
    return header.encode(linesep="\r\n", maxlinelen=_ENCODED_LINE)


def _quoted_printable(body: str) -> str:
    """The body's UTF-8 as quoted-printable lines of at most 76 characters, CRLF between them.

    binascii's encoder (C) rather than email.quoprimime's (Python, a call per character), which was over a third
    of composing an e-mail.
    """
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    raw = text.encode("utf-8")
    # Only LF line ends go in, so every line end that comes out is LF, hard or soft (`=`): each becomes CRLF.
    lines = binascii.b2a_qp(raw, quotetabs=False, istext=True, header=False).decode("ascii").split("\n")
    if any(len(line) > _QP_LINE for line in lines):
        # binascii does not count a line's last blank, written as =20 or =09, against the 76.
        return quoprimime.body_encode(raw.decode("latin-1"), maxlinelen=_QP_LINE, eol="\r\n").removesuffix("\r\n")
    return "\r\n".join(lines).removesuffix("\r\n")
