"""Personalisation: the inr / inr_full filters, money attributes in templates, and product recommendations."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.campaigns.content import ContentTemplates, PushTemplates, TemplateRegistry, compile_content
from services.campaigns.products import CatalogError, Product, ProductCatalog, parse_catalog
from services.campaigns.rendering import Money, Offer, RenderFailed, Rupees, inr_filter, inr_full_filter

CATEGORIES = ["Equity", "Debt", "Hybrid", "ELSS", "International", "Sectoral", "Thematic"]


def push(body: str) -> str:
    """Renders `body` as a push body for a fund investor with a ₹4,52,400 portfolio and a ₹45,240 SIP."""
    content = compile_content(
        ContentTemplates(push=PushTemplates("t", body)), ("PUSH",), offer_has_amount=False, registry=TemplateRegistry()
    )
    attributes = {
        "first_name": "Asha",
        "total_aum": Money(4_52_400_00, "INR"),
        "monthly_sip": 45240.0,
        "fund_categories": frozenset({"Equity", "ELSS"}),
        "customer_tier": "Premium",
    }
    context = content.context(attributes, "CSELL-NOV-T06-0884", Offer("LUMPSUM"), CATALOG)
    return content.render("PUSH", context).body  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{{ total_aum }}", "₹4,52,400"),
        ("{{ total_aum | inr }}", "₹4.52 lakh"),
        ("{{ total_aum | inr_full }}", "₹4,52,400"),
        ("{{ monthly_sip | inr }}", "₹45,240"),
        ("{{ 1740000 | inr }}", "₹17.4 lakh"),
        ("{{ 12400000 | inr }}", "₹1.24 crore"),
        ("{{ 4524000.5 | inr_full }}", "₹45,24,000.50"),
        ("{% if total_aum.rupees >= 400000 %}big{% endif %}", "big"),
        ("{{ fund_categories | join(', ') }}", "ELSS, Equity"),
    ],
)
def test_amounts_print_the_indian_way(body: str, expected: str) -> None:
    assert push(body) == expected


def test_a_filter_given_text_fails_the_render_without_quoting_it() -> None:
    with pytest.raises(RenderFailed) as failure:
        push("{{ first_name | inr }}")
    assert "inr filter needs an amount" in failure.value.reason
    assert "Asha" not in failure.value.reason


@given(st.integers(min_value=0, max_value=10**15))
def test_inr_full_groups_three_then_twos_and_keeps_every_rupee(rupees: int) -> None:
    text = inr_full_filter(rupees)
    digits = text.removeprefix("₹")
    assert int(digits.replace(",", "")) == rupees
    groups = digits.split(",")
    assert len(groups[-1]) == 3 or len(groups) == 1
    assert all(len(group) == 2 for group in groups[1:-1])
    assert 1 <= len(groups[0]) <= (3 if len(groups) == 1 else 2)


@given(st.integers(min_value=0, max_value=10**15))
def test_inr_compact_says_lakh_or_crore_within_rounding(paise: int) -> None:
    text = inr_filter(Rupees(Money(paise, "INR")))
    match = re.fullmatch(r"₹([0-9.,]+)(?: (lakh|crore))?", text)
    assert match is not None, text
    number = float(match.group(1).replace(",", ""))
    scale = {"lakh": 100_000, "crore": 10_000_000, None: 1}[match.group(2)]
    rupees = paise / 100
    assert abs(number * scale - rupees) <= 0.005 * scale + 0.5
    if match.group(2) == "lakh":
        assert 1 <= number < 100
    if match.group(2) is None:
        assert rupees < 100_000


def product(code: str, category: str, tiers: frozenset[str] = frozenset()) -> Product:
    return Product(code, f"{code} fund", category, f"https://fundsy.example/{code}", tiers=tiers)


CATALOG = ProductCatalog(
    "test",
    (
        product("HYB", "Hybrid"),
        product("DEBT", "Debt"),
        product("HYB2", "Hybrid"),
        product("ELSS", "ELSS"),
        product("INTL", "International", frozenset({"Premium", "HNI"})),
        product("EQ", "Equity"),
    ),
)


def test_recommendations_skip_held_categories_repeats_and_other_tiers() -> None:
    held = {"fund_categories": frozenset({"debt"}), "customer_tier": "Standard"}
    assert [p.code for p in CATALOG.recommend(held)] == ["HYB", "ELSS", "EQ"]
    premium = {"fund_categories": frozenset({"Hybrid", "ELSS"}), "customer_tier": "Premium"}
    assert [p.code for p in CATALOG.recommend(premium)] == ["DEBT", "INTL", "EQ"]
    assert [p.code for p in CATALOG.recommend({}, limit=2)] == ["HYB", "DEBT"]


def test_recommendations_in_a_template() -> None:
    body = "{% for fund in recommendations[:2] %}{{ fund.name }} ({{ fund.category }}); {% endfor %}"
    assert push(body) == "HYB fund (Hybrid); DEBT fund (Debt);"


@given(
    held=st.frozensets(st.sampled_from(CATEGORIES)),
    tier=st.sampled_from(["Standard", "Premium", "HNI", None]),
    limit=st.integers(min_value=1, max_value=4),
    order=st.permutations(list(CATALOG.products)),
)
def test_recommendation_rule_properties(
    held: frozenset[str], tier: str | None, limit: int, order: list[Product]
) -> None:
    catalog = ProductCatalog("p", tuple(order))
    attributes: dict[str, object] = {"fund_categories": held}
    if tier is not None:
        attributes["customer_tier"] = tier
    picked = catalog.recommend(attributes, limit)
    assert picked == catalog.recommend(dict(attributes), limit)  # deterministic
    assert len(picked) <= limit
    assert not {p.category for p in picked} & held
    assert len({p.category for p in picked}) == len(picked)
    assert all(not p.tiers or tier in p.tiers for p in picked)
    positions = [order.index(p) for p in picked]
    assert positions == sorted(positions)  # catalog order is the ranking
    # Nothing eligible was passed over while there was room.
    if len(picked) < limit:
        eligible_categories = {p.category for p in order if p.category not in held and (not p.tiers or tier in p.tiers)}
        assert {p.category for p in picked} == eligible_categories


def test_catalog_file_errors_name_the_entry() -> None:
    with pytest.raises(CatalogError, match=r"products\[1\]\.code 'A' appears twice"):
        parse_catalog(
            {
                "version": "1",
                "products": [
                    {"code": "A", "name": "a", "category": "Debt", "url": "https://x.example/a"},
                    {"code": "A", "name": "b", "category": "Debt", "url": "https://x.example/b"},
                ],
            },
            "products.yaml",
        )
    with pytest.raises(CatalogError, match=r"url must be an https"):
        parse_catalog(
            {"version": "1", "products": [{"code": "A", "name": "a", "category": "Debt", "url": "http://x"}]}, "p"
        )
    with pytest.raises(CatalogError, match="min_sip_rupees"):
        parse_catalog(
            {
                "version": "1",
                "products": [
                    {"code": "A", "name": "a", "category": "D", "url": "https://x.example", "min_sip_rupees": 5.5}
                ],
            },
            "p",
        )
