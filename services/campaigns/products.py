"""The product catalog and the rule that picks each person's 2-3 recommended products."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.campaigns.rendering import Money, Rupees

DEFAULT_RECOMMENDATIONS = 3
# The attributes the rule reads; fetched for every person when a template uses {{ recommendations }}.
HELD_CATEGORIES_ATTRIBUTE = "fund_categories"
TIER_ATTRIBUTE = "customer_tier"


class CatalogError(ValueError):
    """The catalog file is malformed; the message names the entry and the field."""


@dataclass(frozen=True)
class Product:
    """One product the institution offers, e.g. a fund scheme, and who may be shown it."""

    code: str
    name: str
    category: str
    url: str
    pitch: str = ""
    min_sip: Money | None = None
    min_lumpsum: Money | None = None
    # Empty: every tier; otherwise only people whose customer_tier is one of these.
    tiers: frozenset[str] = frozenset()

    def template_value(self) -> dict[str, object]:
        """What {{ recommendations[0] }} holds: name, category, url, pitch, code and amounts as Rupees."""
        return {
            "code": self.code,
            "name": self.name,
            "category": self.category,
            "url": self.url,
            "pitch": self.pitch,
            "min_sip": Rupees(self.min_sip) if self.min_sip else None,
            "min_lumpsum": Rupees(self.min_lumpsum) if self.min_lumpsum else None,
        }


def _held(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value.casefold()})
    if isinstance(value, frozenset | set | list | tuple):
        return frozenset(str(item).casefold() for item in value)
    return frozenset()


@dataclass(frozen=True)
class ProductCatalog:
    """Products in the institution's order of preference; `version` is quoted in previews and logs."""

    version: str
    products: tuple[Product, ...] = ()

    def recommend(self, attributes: Mapping[str, object], limit: int = DEFAULT_RECOMMENDATIONS) -> list[Product]:
        """The first `limit` products, in catalog order, of categories the person does not hold.

        The rule, so a marketer can predict it: walk the catalog top to bottom; skip a product
        whose category is in the person's fund_categories (case-insensitive), one whose tiers
        leave out the person's customer_tier, and one whose category was already picked (one
        product per category, so three picks are three kinds of diversification). No randomness,
        no per-person state: the same attributes and catalog always give the same products.
        """
        held = _held(attributes.get(HELD_CATEGORIES_ATTRIBUTE))
        tier = attributes.get(TIER_ATTRIBUTE)
        picked: list[Product] = []
        categories: set[str] = set()
        for product in self.products:
            category = product.category.casefold()
            if category in held or category in categories:
                continue
            if product.tiers and (not isinstance(tier, str) or tier not in product.tiers):
                continue
            picked.append(product)
            categories.add(category)
            if len(picked) == limit:
                break
        return picked


def _text(entry: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise CatalogError(f"{where}.{key} must be a non-empty string")
    return value.strip()


def _rupees(entry: Mapping[str, Any], key: str, where: str) -> Money | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CatalogError(f"{where}.{key} must be a positive whole number of rupees, e.g. 500")
    return Money(value * 100, "INR")


def parse_catalog(document: object, source: str) -> ProductCatalog:
    """A catalog from its YAML document: {version, products: [{code, name, category, url, ...}]}."""
    if not isinstance(document, Mapping):
        raise CatalogError(f"{source}: expected a mapping with 'version' and 'products'")
    version = document.get("version")
    if not isinstance(version, str | int) or not str(version).strip():
        raise CatalogError(f"{source}: 'version' is required, e.g. '2026-11-01'")
    entries = document.get("products") or []
    if not isinstance(entries, list):
        raise CatalogError(f"{source}: 'products' must be a list")
    products: list[Product] = []
    codes: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{source}: products[{index}]"
        if not isinstance(entry, Mapping):
            raise CatalogError(f"{where} must be a mapping")
        code = _text(entry, "code", where)
        if code in codes:
            raise CatalogError(f"{where}.code {code!r} appears twice")
        codes.add(code)
        tiers = entry.get("tiers") or []
        if not isinstance(tiers, list) or not all(isinstance(tier, str) for tier in tiers):
            raise CatalogError(f"{where}.tiers must be a list of customer tiers, e.g. [Premium, HNI]")
        url = _text(entry, "url", where)
        if not url.startswith("https://"):
            raise CatalogError(f"{where}.url must be an https:// link")
        products.append(
            Product(
                code=code,
                name=_text(entry, "name", where),
                category=_text(entry, "category", where),
                url=url,
                pitch=_text(entry, "pitch", where, required=False),
                min_sip=_rupees(entry, "min_sip_rupees", where),
                min_lumpsum=_rupees(entry, "min_lumpsum_rupees", where),
                tiers=frozenset(tiers),
            )
        )
    return ProductCatalog(str(version).strip(), tuple(products))
