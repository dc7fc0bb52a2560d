"""The shipped alerting rules are well formed, each is explained in the runbook and each alert the runbook explains is
shipped, and (in the e2e test) every metric they watch is one the processes expose."""

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
# The exporter sidecars' metric families the rules read, each with the job its exporter is scraped under
# (deploy/prometheus/scrape.yml): postgres-exporter beside each database, prometheus-nats-exporter beside each NATS
# member. A family not here is a misspelling until someone has checked that the pinned exporter publishes it.
EXPORTED = {
    "pg_up": 'job=~"xsell-.+-db"',
    "pg_stat_activity_count": 'job=~"xsell-.+-db"',
    "pg_settings_max_connections": 'job=~"xsell-.+-db"',
    "jetstream_consumer_num_pending": 'job="xsell-nats"',
}
EXPORTER_SERIES = re.compile(r"\b((?:pg|jetstream|gnatsd)_[a-z_]+)(\{[^}]*\})?")


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
        assert (
            re.search(r"\bxsell_[a-z_]+", rule["expr"])
            or any(f"{b}{{" in rule["expr"] for b in BUILTIN)
            or EXPORTER_SERIES.search(rule["expr"])
        )


def test_rules_on_exporters_read_known_families_from_the_exporters_jobs() -> None:
    """A rule on an exporter's series names a family that exporter publishes and selects it by the job it is scraped
    under: an exporter's `up` and its series carry no xsell_ name, so a misspelt one would match nothing silently."""
    read = set()
    for rule in _rules():
        for family, selector in EXPORTER_SERIES.findall(rule["expr"]):
            read.add(family)
            assert family in EXPORTED, f"{rule['alert']} reads {family}, which no exporter here is known to publish"
            assert EXPORTED[family] in selector, f"{rule['alert']} reads {family} without {EXPORTED[family]}"
    assert read == set(EXPORTED)


def test_the_runbook_says_what_each_alert_means_and_what_to_do() -> None:
    runbook = RUNBOOK.read_text()
    for rule in _rules():
        assert f"`{rule['alert']}`" in runbook, f"{rule['alert']} is not explained in docs/operations.md"


def runbook_alerts() -> dict[str, str]:
    """The alerts docs/operations.md's "Alerts" section explains, each with the severity it gives."""
    section = RUNBOOK.read_text().split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^- `(Xsell[A-Za-z]+)` \((page|ticket)\)", section, flags=re.MULTILINE))


def test_every_alert_the_runbook_explains_is_a_rule_of_that_severity() -> None:
    """The reverse of the test above: a runbook entry whose rule never landed (XsellProviderFailingAccepted's did
    not, once) promises an alert that never fires."""
    documented = runbook_alerts()
    rules = {rule["alert"]: rule["labels"]["severity"] for rule in _rules()}
    assert len(documented) >= len(rules)
    for alert, severity in documented.items():
        assert alert in rules, f"docs/operations.md explains {alert}, which deploy/prometheus/alerts.yml lacks"
        assert rules[alert] == severity, f"{alert} is {rules[alert]} in alerts.yml, {severity} in the runbook"


def test_every_alert_the_docs_name_is_a_rule() -> None:
    rules = {rule["alert"] for rule in _rules()}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for alert in set(re.findall(r"`(Xsell[A-Z][A-Za-z]+)`", page.read_text())):
            assert alert in rules, f"{page.relative_to(ROOT)} names {alert}, which deploy/prometheus/alerts.yml lacks"


def test_the_receipts_alert_reads_the_labels_and_states_channels_counts() -> None:
    """xsell_channels_receipts_total{channel, state} (services/channels/api.py), state one of the receipts' lowercased;
    a label or state it does not have would select nothing, and the rule would never fire."""
    from services.channels.delivery import DeliveryState

    states = {state.value.lower() for state in (DeliveryState.SENT, DeliveryState.DELIVERED, DeliveryState.FAILED)}
    (rule,) = [rule for rule in _rules() if "xsell_channels_receipts_total" in rule["expr"]]
    assert rule["alert"] == "XsellProviderFailingAccepted"
    selectors = re.findall(r"xsell_channels_receipts_total\{([^}]*)\}", rule["expr"])
    assert selectors
    for selector in selectors:
        for label, _, value in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', selector):
            assert label in {"channel", "state"}, selector
            if label == "state":
                assert set(value.split("|")) <= states, selector
    assert set(re.findall(r"by \(([^)]*)\)", rule["expr"])) == {"channel"}
    # The volume floor: a ratio over a handful of reports is no pattern.
    assert re.search(r"\)\s*>\s*20\s*$", rule["expr"].strip())


def test_rules_read_only_metric_families_of_the_known_shapes() -> None:
    assert alert_metrics() >= {
        "xsell_outbox_oldest_age_seconds",
        "xsell_consumer_pending",
        "xsell_segments_events_total",
    }


SCRAPE = ROOT / "deploy" / "prometheus" / "scrape.yml"
POD_MONITOR = ROOT / "deploy" / "prometheus" / "podmonitor.yaml"


def relabel(labels: dict[str, str], rules: list[dict[str, Any]], *, operator: bool = False) -> dict[str, str] | None:
    """Prometheus' relabelling (replace and keep) of one target's labels; None when a keep rule drops it. The
    Operator's PodMonitor spells the same fields in camelCase."""
    keys = ("sourceLabels", "targetLabel") if operator else ("source_labels", "target_label")
    labels = dict(labels)
    for rule in rules:
        value = ";".join(labels.get(name, "") for name in rule.get(keys[0], []))
        match = re.fullmatch(str(rule.get("regex", "(.*)")), value)
        if rule.get("action", "replace") == "keep":
            if match is None:
                return None
        elif match is not None:
            labels[rule[keys[1]]] = match.expand(str(rule.get("replacement", "$1")).replace("$", "\\"))
    return labels


def _discovered(namespace: str, workload: dict[str, Any]) -> dict[str, str]:
    """The labels Kubernetes service discovery gives a pod of `workload` (address without a port, as for a pod
    whose container ports are not chosen)."""
    template = workload["spec"]["template"]["metadata"]
    labels = {
        "__address__": "10.0.0.7",
        "__metrics_path__": "/metrics",
        "job": "xsell",
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": f"{workload['metadata']['name']}-7d9c-abcde",
    }
    for name, value in template.get("labels", {}).items():
        labels[f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', name)}"] = value
    for name, value in template.get("annotations", {}).items():
        labels[f"__meta_kubernetes_pod_annotation_{re.sub(r'[^a-zA-Z0-9_]', '_', name)}"] = value
    return labels


def test_every_process_database_and_nats_is_scraped_under_the_job_the_alerts_select_and_nothing_else_is() -> None:
    from tests.deploy.manifests import K8S, OVERLAYS, PROCESSES, WORKLOAD_KINDS, of_kind, render

    expected = {*PROCESSES, *(f"{process}-db" for process in PROCESSES), "nats"}
    (config,) = yaml.safe_load(SCRAPE.read_text())["scrape_configs"]
    monitor = yaml.safe_load(POD_MONITOR.read_text())["spec"]
    (endpoint,) = monitor["podMetricsEndpoints"]
    (selected,) = monitor["selector"]["matchExpressions"]
    assert set(selected["values"]) == expected
    down = next(rule for rule in _rules() if rule["alert"] == "XsellProcessDown")
    (job_pattern,) = re.findall(r'job=~"([^"]+)"', down["expr"])
    for overlay in OVERLAYS:
        docs = render(K8S, overlay)
        namespace = next(doc["metadata"]["name"] for doc in docs if doc["kind"] == "Namespace")
        scraped = {}
        for workload in of_kind(docs, *WORKLOAD_KINDS):
            target = relabel(_discovered(namespace, workload), config["relabel_configs"])
            if target is None:
                continue
            scraped[workload["metadata"]["name"]] = target
            assert re.fullmatch(job_pattern, target["job"]), target["job"]
            assert (
                target["job"] == f"xsell-{workload['spec']['template']['metadata']['labels']['app.kubernetes.io/name']}"
            )
            ports = {
                p["name"]: p["containerPort"]
                for c in workload["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])
            }
            assert (target["__address__"], target["__metrics_path__"]) == (f"10.0.0.7:{ports['metrics']}", "/metrics")
            assert target["instance"].startswith(workload["metadata"]["name"])
            # The PodMonitor names the same job, on a container port called `metrics`.
            operator = relabel(_discovered(namespace, workload), endpoint["relabelings"], operator=True)
            assert operator is not None and operator["job"] == target["job"]
            assert endpoint["port"] in ports, workload["metadata"]["name"]
        assert set(scraped) == expected, (overlay, sorted(scraped))
