"""Link rewriting, open pixel and MIME headers of an outgoing e-mail, without I/O."""

import email
import email.policy
import json
import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest

from plumbing.signing import BadSignature, verify
from services.channels.composition import (
    TrackingLinks,
    add_open_pixel,
    compose,
    rewrite_html,
    rewrite_text,
)
from services.channels.delivery import OutgoingEmail

SECRET = "unit-secret"
CAMPAIGN_ID = "CSELL-NOV-T06-0884"
BASE = "https://t.example.in"
LINKS = TrackingLinks(BASE, SECRET, CAMPAIGN_ID)
NOW = datetime(2025, 11, 3, 9, 30, tzinfo=UTC)

HTML = """<html><body>
<p>Pre-approved: <a href="https://bank.example.in/offer?x=1&amp;y=2">see your offer</a></p>
<p><a class="cta" href='http://apply.example.in/loan'>apply</a> or <a href=https://bare.example.in/p>bare</a></p>
<p><a href="mailto:help@bank.example.in">write to us</a> <a href="#top">top</a>
<a data-href="https://not-a-link.example.in" href="https://third.example.in/">third</a></p>
<p><a href="xsell:unsubscribe">Unsubscribe</a></p>
</body></html>"""

TEXT = (
    "See your offer: https://bank.example.in/offer?x=1&y=2.\n"
    "Apply (https://apply.example.in/loan)\n"
    "Stop: xsell:unsubscribe\n"
)


def _token(url: str, kind: str) -> dict[str, object]:
    prefix = f"{BASE}/{kind}/"
    assert url.startswith(prefix), url
    token = url.removeprefix(prefix).removesuffix(".gif")
    return verify(token, SECRET)


def _hrefs(html: str) -> list[str]:
    return re.findall(r"""(?<![\w-])href\s*=\s*["']?([^"'\s>]+)""", html)


def test_every_web_link_in_html_is_wrapped_and_its_token_carries_campaign_id_and_original_url() -> None:
    rewritten = rewrite_html(HTML, LINKS)
    hrefs = _hrefs(rewritten)
    clicks = [verify(h.removeprefix(f"{BASE}/c/"), SECRET) for h in hrefs if h.startswith(f"{BASE}/c/")]
    assert clicks == [
        {"c": CAMPAIGN_ID, "k": "c", "u": "https://bank.example.in/offer?x=1&y=2"},
        {"c": CAMPAIGN_ID, "k": "c", "u": "http://apply.example.in/loan"},
        {"c": CAMPAIGN_ID, "k": "c", "u": "https://bare.example.in/p"},
        {"c": CAMPAIGN_ID, "k": "c", "u": "https://third.example.in/"},
    ]
    assert "bank.example.in/offer" not in rewritten
    assert "apply.example.in" not in rewritten


def test_non_web_links_and_other_attributes_are_left_alone() -> None:
    rewritten = rewrite_html(HTML, LINKS)
    assert 'href="mailto:help@bank.example.in"' in rewritten
    assert 'href="#top"' in rewritten
    assert 'data-href="https://not-a-link.example.in"' in rewritten


def test_unsubscribe_pseudo_link_becomes_signed_unsubscribe_link() -> None:
    rewritten = rewrite_html(HTML, LINKS)
    unsubscribes = [h for h in _hrefs(rewritten) if h.startswith(f"{BASE}/u/")]
    assert len(unsubscribes) == 1
    assert _token(unsubscribes[0], "u") == {"c": CAMPAIGN_ID, "k": "u"}
    assert "xsell:unsubscribe" not in rewritten


def test_tampered_token_does_not_verify() -> None:
    href = next(h for h in _hrefs(rewrite_html(HTML, LINKS)) if h.startswith(f"{BASE}/c/"))
    body, _, mac = href.removeprefix(f"{BASE}/c/").partition(".")
    with pytest.raises(BadSignature):
        verify(f"{body}x.{mac}", SECRET)
    with pytest.raises(BadSignature):
        verify(f"{body}.{mac}", "another-secret")


def test_text_urls_are_wrapped_without_their_trailing_punctuation() -> None:
    rewritten = rewrite_text(TEXT, LINKS)
    urls = re.findall(r"https://t\.example\.in/[cu]/[A-Za-z0-9_.-]+", rewritten)
    payloads = [_token(url.rstrip("."), url.split("/")[3]) for url in urls]
    assert payloads == [
        {"c": CAMPAIGN_ID, "k": "c", "u": "https://bank.example.in/offer?x=1&y=2"},
        {"c": CAMPAIGN_ID, "k": "c", "u": "https://apply.example.in/loan"},
        {"c": CAMPAIGN_ID, "k": "u"},
    ]
    # The sentence's full stop and the closing parenthesis stay in the text, outside the links.
    assert re.search(r"/c/[A-Za-z0-9_.-]+\.\n", rewritten)
    assert re.search(r"/c/[A-Za-z0-9_.-]+\)\n", rewritten)
    assert "bank.example.in" not in rewritten


def test_open_pixel_goes_before_body_end_and_carries_campaign_id() -> None:
    html = add_open_pixel("<html><body><p>hi</p></body></html>", LINKS)
    match = re.search(r'<img src="([^"]+)" width="1" height="1" alt="">', html)
    assert match is not None
    assert html.index(match.group(0)) < html.index("</body>")
    assert match.group(1).endswith(".gif")
    assert _token(match.group(1), "o") == {"c": CAMPAIGN_ID, "k": "o"}
    assert add_open_pixel("<p>fragment</p>", LINKS).startswith("<p>fragment</p><img ")


def _wire(
    esp_events: str = "", ses_configuration_set: str = "", campaign_id: str = CAMPAIGN_ID, **overrides: str
) -> bytes:
    fields = {
        "to_address": "priya@example.in",
        "from_name": "Acme Bank",
        "subject": "Your pre-approved loan",
        "html_body": HTML,
        "text_body": TEXT,
    } | overrides
    return compose(
        OutgoingEmail(**fields),
        campaign_id=campaign_id,
        from_address="offers@bank.example.in",
        message_id_domain="mail.bank.example.in",
        links=LINKS,
        now=NOW,
        esp_events=esp_events,
        ses_configuration_set=ses_configuration_set,
    )


def _compose(**overrides: str) -> EmailMessage:
    wire = _wire(**overrides)
    # What the relay receives: CRLF lines of at most 78 characters but for the unsubscribe link, parsed back.
    assert b"\n" not in wire.replace(b"\r\n", b"")
    assert all(len(line) <= 78 for line in wire.split(b"\r\n") if not line.startswith(b"List-Unsubscribe:"))
    parsed = email.message_from_bytes(wire, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_headers_identify_the_outreach_and_offer_one_click_unsubscribe() -> None:
    message = _compose()
    assert message["Message-ID"] == f"<{CAMPAIGN_ID}@mail.bank.example.in>"
    assert message["X-Xsell-Campaign-Id"] == CAMPAIGN_ID
    assert message["To"] == "priya@example.in"
    assert message["From"] == "Acme Bank <offers@bank.example.in>"
    assert message["Subject"] == "Your pre-approved loan"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = message["List-Unsubscribe"]
    assert unsubscribe.startswith("<") and unsubscribe.endswith(">")
    assert _token(unsubscribe[1:-1], "u") == {"c": CAMPAIGN_ID, "k": "u"}
    assert message["Date"] == "Mon, 03 Nov 2025 09:30:00 +0000"


def test_through_sendgrid_the_campaign_id_is_a_unique_arg_every_event_carries() -> None:
    assert _compose()["X-SMTPAPI"] is None
    assert json.loads(_compose(esp_events="sendgrid")["X-SMTPAPI"]) == {
        "unique_args": {"xsell_campaign_id": CAMPAIGN_ID}
    }
    assert _compose(esp_events="sendgrid")["X-SES-MESSAGE-TAGS"] is None


def test_through_ses_the_campaign_id_is_a_message_tag_and_the_configuration_set_is_named() -> None:
    assert _compose()["X-SES-MESSAGE-TAGS"] is None
    untold = _compose(esp_events="ses")
    assert untold["X-SES-MESSAGE-TAGS"] == f"xsell_campaign_id={CAMPAIGN_ID}"
    assert untold["X-SES-CONFIGURATION-SET"] is None and untold["X-SMTPAPI"] is None
    assert _compose(esp_events="ses", ses_configuration_set="xsell-events")["X-SES-CONFIGURATION-SET"] == "xsell-events"
    # SES refuses a tag value beyond letters, digits, _ . @ -: such an outreach is named by its Message-ID alone.
    odd = _compose(esp_events="ses", campaign_id="CSELL+NOV/T06")
    assert odd["X-SES-MESSAGE-TAGS"] is None and odd["Message-ID"] == "<CSELL+NOV/T06@mail.bank.example.in>"


def test_body_is_multipart_alternative_with_tracked_text_and_html() -> None:
    message = _compose()
    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None and html_part is not None
    text, html = text_part.get_content(), html_part.get_content()
    assert "https://t.example.in/c/" in text and "bank.example.in/offer" not in text
    assert "https://t.example.in/c/" in html and "bank.example.in/offer" not in html
    assert re.search(r'<img src="https://t\.example\.in/o/[^"]+\.gif" width="1" height="1" alt="">', html)


def test_missing_text_or_html_body_is_derived_from_the_other() -> None:
    text_only = _compose(html_body="")
    html_part = text_only.get_body(("html",))
    assert html_part is not None
    hrefs = _hrefs(html_part.get_content())
    assert [h.split("/")[3] for h in hrefs] == ["c", "c", "u"]
    assert verify(hrefs[0].removeprefix(f"{BASE}/c/"), SECRET)["u"] == "https://bank.example.in/offer?x=1&y=2"
    assert "/o/" in html_part.get_content()
    html_only = _compose(text_body="")
    text_part = html_only.get_body(("plain",))
    assert text_part is not None
    assert "see your offer" in text_part.get_content()


def test_header_with_line_break_is_refused() -> None:
    with pytest.raises(ValueError):
        _compose(subject="hello\r\nBcc: everyone@example.in")


def test_text_beyond_ascii_survives_the_trip_in_headers_and_bodies() -> None:
    subject = "आपका ऋण स्वीकृत है — ₹5,00,000 pre-approved for you, Priya, valid until the end of this month"
    message = _compose(
        subject=subject,
        from_name="Acmé Bank, Mumbai",
        text_body="Namaste 🙏 — ₹5,00,000 ready.\n.leading dot and trailing space \nStop: xsell:unsubscribe\n",
    )
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "Acmé Bank, Mumbai"
    assert message["From"].addresses[0].addr_spec == "offers@bank.example.in"
    text_part = message.get_body(("plain",))
    assert text_part is not None
    text = text_part.get_content().replace("\r\n", "\n")  # the wire's line ends, as a relay keeps them
    assert text.startswith("Namaste 🙏 — ₹5,00,000 ready.\n.leading dot and trailing space \n")
    assert "https://t.example.in/u/" in text


def test_long_headers_are_folded_and_a_long_display_name_is_split_into_short_encoded_words() -> None:
    name = "भारतीय स्टेट बैंक ग्राहक सेवा विभाग मुंबई शाखा"
    subject = "Your pre-approved loan of Rs 5,00,000 is waiting for you, Priya: see the offer and apply today"
    message = _compose(from_name=name, subject=subject)  # _compose checks that every line is at most 78
    assert message["Subject"] == subject
    assert message["From"].addresses[0].addr_spec == "offers@bank.example.in"
    raw_from = email.message_from_bytes(_wire(from_name=name), policy=email.policy.compat32)["From"]
    assert all(len(word) <= 75 for word in re.findall(r"=\?[^?]+\?[bBqQ]\?[^?]*\?=", raw_from))
    # RFC 2047 joins adjacent encoded words (the email package's address parser leaves a space between them).
    assert str(make_header(decode_header(raw_from))) == f"{name} <offers@bank.example.in>"


def test_a_campaign_id_that_would_add_headers_is_refused() -> None:
    with pytest.raises(ValueError, match="campaign_id must be visible ASCII"):
        compose(
            OutgoingEmail("priya@example.in", "Acme Bank", "Hi", HTML, TEXT),
            campaign_id="CSELL-1\r\nBcc: everyone@example.in",
            from_address="offers@bank.example.in",
            message_id_domain="mail.bank.example.in",
            links=LINKS,
            now=NOW,
        )


@pytest.mark.parametrize(
    "html_body",
    [
        '<p><a href="https://bank.example.in/&#' + "1" * 5000 + ';">offer</a></p>',  # in a link: unescaped to track it
        "<p>&#" + "1" * 5000 + ";</p>",  # HTML only: unescaped for the text part
    ],
    ids=["in-a-link", "in-the-text"],
)
def test_a_character_reference_too_long_to_read_is_refused_naming_the_body(html_body: str) -> None:
    """Python refuses to read an int of over 4,300 digits; its advice to raise the limit was the message's reason."""
    with pytest.raises(ValueError) as refused:
        compose(
            OutgoingEmail("priya@example.in", "Acme Bank", "Hi", html_body, ""),
            campaign_id=CAMPAIGN_ID,
            from_address="offers@bank.example.in",
            message_id_domain="mail.bank.example.in",
            links=LINKS,
            now=NOW,
        )
    assert str(refused.value).startswith("email.html_body holds a character reference (&#...;) too long")


# Template bodies an author (or a broken editor) can write, ~200,000 characters each. No time is asserted: a pattern
# that reads to the end again from every start stalls these tests for seconds to minutes, which is the signal.
LONG = 200_000


def _long(unit: str) -> str:
    return unit * (LONG // len(unit))


PATHOLOGICAL_HTML = [
    _long("<"),
    _long("<a"),
    _long("<a "),
    _long('<a href="'),
    _long('href="'),
    _long("href='"),
    _long("href="),
    _long("HREF= "),
    _long("href "),
    "href=" + _long(" \t\n"),
    'href="' + _long("x"),
    "href='" + _long('href="x'),
    _long("http://"),
    _long("https://<"),
    _long("</body"),
    _long("</body "),
    "</body" + _long(" \n"),
    _long(" \t\n"),
]


@pytest.mark.parametrize("filler", PATHOLOGICAL_HTML, ids=lambda filler: repr(filler[:12]))
def test_pathological_html_after_a_link_is_left_as_it_is_and_the_link_is_still_tracked(filler: str) -> None:
    body = f'<a href="https://bank.example.in/offer?x=1&amp;y=2">offer</a>\n{filler}'
    tracked = LINKS.click("https://bank.example.in/offer?x=1&y=2")
    assert rewrite_html(body, LINKS) == f'<a href="{tracked}">offer</a>\n{filler}'


def test_every_one_of_many_bare_web_hrefs_is_tracked() -> None:
    rewritten = rewrite_html(_long("<a href=https://a.in/ >"), LINKS)
    assert rewritten.count(f'href="{BASE}/c/') == LONG // len("<a href=https://a.in/ >")
    assert "a.in" not in rewritten


@pytest.mark.parametrize(
    "filler",
    [
        _long("<"),
        _long("href='"),
        _long("http:// "),
        _long("https://<"),
        _long("xsell:unsubscrib"),
        "See" + _long(" \t\n"),
        _long("."),
    ],
    ids=lambda filler: repr(filler[:12]),
)
def test_pathological_text_after_a_url_is_left_as_it_is_and_the_url_is_still_tracked(filler: str) -> None:
    body = f"See https://bank.example.in/offer.\n{filler}"
    assert rewrite_text(body, LINKS) == f"See {LINKS.click('https://bank.example.in/offer')}.\n{filler}"


def test_a_text_url_as_long_as_the_body_is_one_tracked_link() -> None:
    url = _long("http://")
    [link] = re.findall(r"\S+", rewrite_text(url, LINKS))
    assert _token(link, "c") == {"c": CAMPAIGN_ID, "k": "c", "u": url}


def test_every_one_of_many_unsubscribe_pseudo_links_is_made_real() -> None:
    count = LONG // len("xsell:unsubscribe")
    assert rewrite_text(_long("xsell:unsubscribe"), LINKS) == LINKS.unsubscribe() * count


@pytest.mark.parametrize(
    "filler", [_long("</body"), _long("</body "), "</body" + _long(" \n"), _long("<")], ids=lambda f: repr(f[:12])
)
def test_without_a_closed_body_end_the_open_pixel_goes_at_the_end_of_a_pathological_body(filler: str) -> None:
    with_pixel = add_open_pixel(filler, LINKS)
    assert with_pixel.startswith(filler)
    assert re.fullmatch(r'<img src="[^"]+" width="1" height="1" alt="">', with_pixel[len(filler) :])


def test_the_open_pixel_goes_before_the_last_of_many_body_ends() -> None:
    body = _long("</body>")
    with_pixel = add_open_pixel(body, LINKS)
    assert with_pixel.startswith(body[: -len("</body>")] + "<img ")
    assert with_pixel.endswith('alt=""></body>')


@pytest.mark.parametrize(
    ("filler", "text"),
    [
        # No ">" follows: nothing there is a tag, so it stays in the text.
        (_long("<"), "Your offer" + _long("<")),
        (_long("<a"), "Your offer" + _long("<a")),
        (_long('<a href="'), "Your offer" + _long('<a href="')),
        (_long("</body"), "Your offer" + _long("</body")),
        # One ">" at the very end: from the first "<" to it is one tag.
        (_long("<") + ">", "Your offer"),
        (_long("<b>&amp;"), "Your offer" + "&" * (LONG // len("<b>&amp;"))),
    ],
    ids=lambda value: repr(value[:12]),
)
def test_a_pathological_html_body_alone_gives_its_text_without_tags(filler: str, text: str) -> None:
    message = _compose(html_body=f"<p>Your offer</p>{filler}", text_body="")
    text_part = message.get_body(("plain",))
    assert text_part is not None
    assert text_part.get_content().replace("\r\n", "\n") == text + "\n"


@pytest.mark.parametrize(
    ("text", "paragraph"),
    [
        (_long("<"), "&lt;" * LONG),
        (_long("&"), "&amp;" * LONG),
        (_long("http:// "), _long("http:// ")),
        (_long("http://"), f'<a href="{LINKS.click(_long("http://"))}">{_long("http://")}</a>'),
    ],
    ids=lambda value: repr(value[:12]),
)
def test_a_pathological_text_body_alone_gives_its_html_part_with_tracked_links_and_the_pixel(
    text: str, paragraph: str
) -> None:
    html_part = _compose(html_body="", text_body=text).get_body(("html",))
    assert html_part is not None
    pixel = add_open_pixel("", LINKS)
    assert html_part.get_content() == f"<html><body><p>{paragraph}</p>{pixel}</body></html>"
