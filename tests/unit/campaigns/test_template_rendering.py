"""Compiled templates: those that only print text and names render exactly as Jinja renders them, others by Jinja."""

from datetime import UTC, datetime

import markupsafe
import pytest

from services.campaigns.rendering import (
    CompiledTemplate,
    Money,
    RenderFailed,
    Rupees,
    compile_template,
    escape_text,
    render_template,
    template_environment,
)

TEXT_AND_NAMES = [
    "Hello {{ first_name }}",
    "{{ first_name }}",
    "{{ first_name }}{{ city }}",
    "no names at all\n",
    "",
    '<p>Dear {{ first_name }}, a top-up awaits</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>\n',
    "{{- first_name -}}  ,  {{ city -}}\n  done",
    "Line one\n{{ city }}\n\n",
]
OTHER = [
    "{% if first_name %}Hi {{ first_name }}{% endif %}",
    "{{ first_name | upper }} in {{ city }}",
    "{{ offer.product_code }}",
    "{{ 'literal' }} {{ first_name }}",
    "{% autoescape false %}{{ first_name }}{% endautoescape %}",
    "{{ range(3) | list }}",
]
VALUES: list[object] = [
    "Asha",
    "<b>Tom & 'Jerry' say \"hi\"</b>",
    markupsafe.Markup("<i>already safe</i>"),
    7,
    2.5,
    True,
    None,
    ["a", "<b>"],
    Rupees(Money(45_240_00, "INR")),
    datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
]


def compiled(source: str, *, html: bool) -> CompiledTemplate:
    return compile_template(template_environment(html=html), source, "test")[0]


@pytest.mark.parametrize("html", [False, True])
@pytest.mark.parametrize("source", TEXT_AND_NAMES + OTHER)
# Ids by position and type: a repr with an object address differs between xdist workers, which then refuse to run.
@pytest.mark.parametrize("value", VALUES, ids=[f"{n}-{type(v).__name__}" for n, v in enumerate(VALUES)])
def test_every_template_renders_as_jinja_renders_it(source: str, html: bool, value: object) -> None:
    template = compiled(source, html=html)
    context = {
        "first_name": value,
        "city": value,
        "unsubscribe_url": "xsell:unsubscribe",
        "offer": {"product_code": value},
    }
    assert template.render(context) == template.jinja.render(context)
    assert type(template.render(context)) is type(template.jinja.render(context))


@pytest.mark.parametrize("source", TEXT_AND_NAMES)
def test_text_and_names_skip_jinja(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    template = compiled(source, html=True)
    expected = template.jinja.render({"first_name": "Asha", "city": "Pune", "unsubscribe_url": "u"})

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("rendered by Jinja")

    monkeypatch.setattr(template.jinja, "render", refuse)
    assert template.render({"first_name": "Asha", "city": "Pune", "unsubscribe_url": "u"}) == expected


@pytest.mark.parametrize("html", [False, True])
def test_a_missing_name_fails_with_jinjas_own_reason(html: bool) -> None:
    template = compiled("Hello {{ first_name }} of {{ city }}", html=html)
    with pytest.raises(RenderFailed) as failure:
        render_template(template, {"first_name": "Asha"})
    assert failure.value.reason == "undefined: 'city' is undefined"


@pytest.mark.parametrize("text", ["", "plain", "<a href='x'>&\"</a>", "&amp; already", "ünïcode <&> ✓", "\x00\n\t"])
def test_text_is_escaped_as_markupsafe_escapes_it(text: str) -> None:
    assert escape_text(text) == str(markupsafe.escape(text))


def test_a_name_only_jinja_knows_is_resolved_by_jinja() -> None:
    # Not in the context but one of Jinja's globals: Jinja's lookup decides, as it always did.
    template = compiled("{{ range }}", html=False)
    assert template.render({}) == template.jinja.render({})
