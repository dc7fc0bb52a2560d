"""The shipped alerting rules are well formed, each is explained in the runbook, and (in the e2e test) every
metric they watch is one the processes expose."""

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "operations.md"
# Series Prometheus makes itself, and the suffixes it derives from one histogram.
BUILTIN = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def metric_family(series: str) -> str:
    """A histogram's _bucket / _count / _sum series reduced to its family name."""
    for suffix in HISTOGRAM_SUFFIXES:
        series = series.removesuffix(suffix)
    return series


def alert_metrics() -> set[str]:
    """The xsell metric families the rules' expressions read."""
    return {metric_family(name) for rule in _rules() for name in re.findall(r"\b(xsell_[a-z_]+)", rule["expr"])}


def test_every_rule_is_complete_and_severity_is_page_or_ticket() -> None:
    rules = _rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert rule["alert"].startswith("Xsell"), rule
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.search(r"\bxsell_[a-z_]+", rule["expr"]) or any(f"{b}{{" in rule["expr"] for b in BUILTIN)


def test_the_runbook_says_what_each_alert_means_and_what_to_do() -> None:
    runbook = RUNBOOK.read_text()
    for rule in _rules():
        assert f"`{rule['alert']}`" in runbook, f"{rule['alert']} is not explained in docs/operations.md"


def test_rules_read_only_metric_families_of_the_known_shapes() -> None:
    assert alert_metrics() >= {
        "xsell_outbox_oldest_age_seconds",
        "xsell_consumer_pending",
        "xsell_segments_events_total",
    }
