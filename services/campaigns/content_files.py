"""Loads the product catalog and the template registry from their YAML files at start."""

from dataclasses import dataclass, field
from pathlib import Path

import structlog
import yaml

from services.campaigns.content import TemplateRegistry, parse_registry
from services.campaigns.products import ProductCatalog, parse_catalog

CATALOGS = Path(__file__).parent / "catalogs"
DEFAULT_PRODUCT_CATALOG = CATALOGS / "products.yaml"
DEFAULT_TEMPLATE_REGISTRY = CATALOGS / "templates.yaml"

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ContentLibrary:
    """What content is checked and personalised against: registered templates and the product catalog."""

    registry: TemplateRegistry = field(default_factory=TemplateRegistry)
    products: ProductCatalog = field(default_factory=lambda: ProductCatalog(version=""))


def _document(path: str) -> object:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot be read as YAML ({error})") from error


def load_library(product_catalog_file: str, template_registry_file: str) -> ContentLibrary:
    """Reads both files; an empty path means none (no products to recommend, no registered templates).

    A malformed file stops the service at start with the file, entry and field in the message.
    """
    products = (
        parse_catalog(_document(product_catalog_file), product_catalog_file)
        if product_catalog_file
        else ProductCatalog(version="")
    )
    registry = (
        parse_registry(_document(template_registry_file), template_registry_file)
        if template_registry_file
        else TemplateRegistry()
    )
    log.info(
        "content_library_loaded",
        product_catalog_version=products.version,
        products=len(products.products),
        template_registry_version=registry.version,
        sms_templates=len(registry.sms),
        whatsapp_templates=len(registry.whatsapp),
    )
    return ContentLibrary(registry, products)
