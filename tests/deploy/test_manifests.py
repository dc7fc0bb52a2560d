"""Every overlay renders with the real kubectl, validates offline against the Kubernetes schemas, and keeps the
isolation rules; mutated copies show that each rule check catches what it guards."""

import asyncio
import base64
import datetime
import os
import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import nats
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubernetes_validate.utils import latest_version

from devstack.nats_server import NatsServer
from devstack.nats_tls import TlsFiles, local_certificates
from services import nats_access
from tests.deploy.manifests import (
    K8S,
    MAIN_MODULES,
    METRICS_PORT,
    MONITORING,
    NATS_EXPORTER_PORT,
    NATS_FEEDS,
    OVERLAYS,
    POSTGRES_EXPORTER_PORT,
    PROCESSES,
    Doc,
    admitted_sources,
    find,
    name,
    nats_line_tested,
    nats_violations,
    of_kind,
    optional_secret_files,
    pod_spec,
    render,
    settings_class,
    variables,
    violations,
)
from tests.waiting import eventually

# The oldest minor still common on managed clusters, and the newest the package ships schemas for.
KUBERNETES_VERSIONS = ("1.32", latest_version())


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, render(K8S, request.param)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_validates_offline_against_the_kubernetes_schemas(
    overlay: tuple[str, list[Doc]], version: str
) -> None:
    _, docs = overlay
    # No custom resources: every kind has a schema, so nothing is skipped (an unknown kind fails here).
    failures = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
            failures.append(f"{doc['kind']} {doc['metadata']['name']}: {error.message}")
    assert failures == []


def test_the_deployment_rules_hold(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    assert violations(docs, name) == []


def test_each_database_admits_only_its_own_service(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for process in ("segments", "campaigns", "channels", "attribution", "gateway"):
        assert admitted_sources(docs, find(docs, "StatefulSet", f"{process}-db")) == {process}
    assert admitted_sources(docs, find(docs, "Deployment", "segments")) == {"gateway", "campaigns", "channels"}


def test_only_the_gateway_is_reachable_from_outside(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    wider = {
        doc["metadata"]["name"]: {s for s in admitted_sources(docs, doc) if s == "*" or ":" in s}
        for doc in of_kind(docs, "Deployment", "StatefulSet")
    }
    # NATS, beyond the namespace, to the bulk feeds' labelled pods alone (as user `feeds`: services/nats_access.py).
    assert wider.pop("nats") == {NATS_FEEDS}
    assert {process for process, sources in wider.items() if sources} == {"gateway"}
    ingresses = of_kind(docs, "Ingress")
    assert (len(ingresses) > 0) == (name == "prod")


def test_prometheus_scrapes_the_processes_the_databases_and_nats_on_their_metrics_ports_only(
    overlay: tuple[str, list[Doc]],
) -> None:
    """The five processes on their own port, each database and NATS member on its exporter sidecar's; from the
    monitoring namespace alone, and nothing else of those pods."""
    _, docs = overlay
    scraped = [(find(docs, "Deployment", process), process, METRICS_PORT) for process in PROCESSES]
    scraped += [(find(docs, "StatefulSet", f"{p}-db"), "metrics", POSTGRES_EXPORTER_PORT) for p in PROCESSES]
    scraped += [(find(docs, "StatefulSet", "nats"), "metrics", NATS_EXPORTER_PORT)]
    for workload, container_name, port in scraped:
        where = name(workload)
        assert admitted_sources(docs, workload, metrics=True) == {MONITORING}, where
        template = workload["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port), where
        (container,) = [c for c in template["spec"]["containers"] if c["name"] == container_name]
        assert {"name": "metrics", "containerPort": port} in container["ports"], where
        # The metrics rule opens the scraped port alone: nothing else of the pod is reached from monitoring.
        assert MONITORING not in admitted_sources(docs, workload), where


def test_the_database_exporters_read_their_own_database_with_the_secrets_credentials(
    overlay: tuple[str, list[Doc]],
) -> None:
    _, docs = overlay
    for process in PROCESSES:
        database = find(docs, "StatefulSet", f"{process}-db")
        [postgres] = [c for c in pod_spec(database)["containers"] if c["name"] == "postgres"]
        [exporter] = [c for c in pod_spec(database)["containers"] if c["name"] == "metrics"]
        env = {e["name"]: e for e in exporter["env"]}
        database_name = next(e["value"] for e in postgres["env"] if e["name"] == "POSTGRES_DB")
        assert env["DATA_SOURCE_URI"]["value"] == f"127.0.0.1:5432/{database_name}?sslmode=disable"
        for variable, key in (("DATA_SOURCE_USER", "username"), ("DATA_SOURCE_PASS", "password")):
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert (ref["name"].startswith(f"{process}-db"), ref["key"]) == (True, key), variable


def test_nats_is_three_members_that_fsync_every_write(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    assert find(docs, "StatefulSet", "nats")["spec"]["replicas"] == 3
    for process in ("segments", "campaigns", "channels", "attribution"):
        config = find(docs, "ConfigMap", process)["data"]
        assert config[f"XSELL_{process.upper()}_STREAM_REPLICAS"] == "3", f"{process} streams must live on every member"
    assert nats_violations(docs) == []


def _secret_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's env as the kubelet gives it, the dev overlay's generated Secrets decoded."""
    secrets = {name(doc): doc["data"] for doc in of_kind(docs, "Secret")}
    env = {}
    for variable in container.get("env") or []:
        ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            env[variable["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
        elif "value" in variable:
            env[variable["name"]] = variable["value"]
    return env


async def _each_logs_in_with_its_own_password_alone(url: str, passwords: dict[str, str]) -> None:
    for user in nats_access.USERS:
        connection = await nats.connect(url, user=user, password=passwords[user], allow_reconnect=False)
        await connection.close()
    with pytest.raises(nats.errors.Error):
        await nats.connect(url, user="feeds", password=passwords["operator"], allow_reconnect=False)


def test_the_nats_pods_write_their_accounts_with_hashed_passwords_which_the_real_server_reads(
    tmp_path: Path,
) -> None:
    """The dev overlay's NATS pod, as the kubelet runs it: the init container's own command with its env (the Secret
    nats-users) writes the accounts file; `nats-server -t` accepts nats.conf with it and the nats container's env,
    which holds no password; the file holds none either, only hashes; a real server on it lets each user in with the
    Secret's password, refuses another's, and logs no warning (plaintext passwords were one)."""
    docs = render(K8S, "dev")
    statefulset = find(docs, "StatefulSet", "nats")
    [config_map] = [v["configMap"]["name"] for v in pod_spec(statefulset)["volumes"] if "configMap" in v]
    secrets = {name(doc): doc["data"] for doc in of_kind(docs, "Secret")}
    # The TLS files where the pods mount the Secret nats-tls (/etc/nats-tls), here under tmp_path; the configuration
    # in conf/ as in /etc/nats, the accounts volume beside it as /etc/nats-accounts.
    [tls] = [v["secret"]["secretName"] for v in pod_spec(statefulset)["volumes"] if "secret" in v]
    (tmp_path / "tls").mkdir()
    for key, value in secrets[tls].items():
        (tmp_path / "tls" / key).write_bytes(base64.b64decode(value))
    (tmp_path / "conf").mkdir()
    for file, text in find(docs, "ConfigMap", config_map)["data"].items():
        (tmp_path / "conf" / file).write_text(text.replace("/etc/nats-tls/", f"{tmp_path}/tls/"))
    [write] = pod_spec(statefulset)["initContainers"]
    [server] = [c for c in pod_spec(statefulset)["containers"] if c["name"] == "nats"]
    assert write["image"].startswith("xsell")
    assert write["command"] == [
        "python",
        "-m",
        "services.nats_access",
        "write-config",
        "/etc/nats-accounts/accounts.conf",
        "/data",
    ]
    mounts = {m["name"]: m for m in write["volumeMounts"]}
    assert mounts["accounts"]["mountPath"] == "/etc/nats-accounts" and not mounts["accounts"].get("readOnly")
    assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert {"name": "accounts", "mountPath": "/etc/nats-accounts", "readOnly": True} in server["volumeMounts"]
    [accounts] = [v for v in pod_spec(statefulset)["volumes"] if v["name"] == "accounts"]
    assert accounts["emptyDir"]["medium"] == "Memory"
    written = _secret_env(docs, write)
    passwords = {user: written[nats_access.password_variable(user)] for user in nats_access.USERS}
    (tmp_path / "nats-accounts").mkdir()
    command = [
        sys.executable,
        "-m",
        "services.nats_access",
        "write-config",
        str(tmp_path / "nats-accounts" / "accounts.conf"),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=written | {"PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    configuration = (tmp_path / "nats-accounts" / "accounts.conf").read_text()
    assert not any(password in configuration for password in passwords.values())
    assert configuration.count('password: "$2a$') == len(nats_access.USERS)
    assert f"max_file: {written[nats_access.STORE_VARIABLE]}" in configuration
    assert (tmp_path / "nats-accounts" / "accounts.conf").stat().st_mode & 0o777 == 0o600
    env = {"SERVER_NAME": "nats-0"} | _secret_env(docs, server)
    assert set(env) == {"SERVER_NAME", "GOMEMLIMIT", nats_access.MEMBER_STORE_VARIABLE}
    binary = str(Path(sys.executable).parent / "nats-server")
    checked = subprocess.run(
        [binary, "-c", str(tmp_path / "conf" / "nats.conf"), "-t"], env=env, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    # The accounts, as that server reads them, on a real one: each user logs in with the Secret's password.
    log = tmp_path / "nats.log"
    running = NatsServer(tmp_path / "store", authorization=configuration).start(log)
    try:
        asyncio.run(_each_logs_in_with_its_own_password_alone(running.url, passwords))
    finally:
        running.stop()
    assert "[WRN]" not in log.read_text(), log.read_text()
    # A store too large for the volume it is on (this machine's disk, whatever its size), or a key missing from
    # nats-users, is named and nothing is written.
    for change, problem in (
        (
            {nats_access.MEMBER_STORE_VARIABLE: "900TB", nats_access.STORE_VARIABLE: "900TB"},
            "more than this member's volume",
        ),
        ({nats_access.password_variable("feeds"): ""}, "NATS_PASSWORD_FEEDS is not set: add key 'feeds'"),
    ):
        (tmp_path / "nats-accounts" / "accounts.conf").unlink(missing_ok=True)
        refused = subprocess.run(command, env=written | change, capture_output=True, text=True)
        assert (refused.returncode, problem in refused.stderr) == (1, True), refused.stderr
        assert not (tmp_path / "nats-accounts" / "accounts.conf").exists()


def test_each_service_connects_to_nats_as_its_own_user(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for process in nats_access.SERVICE_USERS:
        assert _config(docs, process)[f"XSELL_{process.upper()}_NATS_USER"] == process
        [container] = pod_spec(find(docs, "Deployment", process))["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        password = refs[f"XSELL_{process.upper()}_NATS_PASSWORD"]
        assert password["name"].startswith("nats-users") and password["key"] == process
        assert _config(docs, process)[f"XSELL_{process.upper()}_NATS_JETSTREAM_API"] == nats_access.IMPORTED_API
        # The provisioner's password goes to the init container that makes the streams and durables, not further.
        spec = pod_spec(find(docs, "Deployment", process))
        [provision] = [c for c in spec["initContainers"] if c["name"] == "provision-nats"]
        assert provision["command"][-1] == "services.nats_provision"
        given = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") for e in provision["env"]}
        assert given["XSELL_NATS_PASSWORD"] == "provisioner"
        others = [c for c in [*spec["initContainers"], *spec["containers"]] if c["name"] != "provision-nats"]
        keys = {e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") for c in others for e in c.get("env") or []}
        assert "provisioner" not in keys


def test_every_nats_client_connects_over_tls_with_the_ca_alone(overlay: tuple[str, list[Doc]]) -> None:
    """Each service and its provision-nats init container: a tls:// URL, and the CA file from the Secret nats-tls,
    mounted without the server's key."""
    _, docs = overlay
    for process in nats_access.SERVICE_USERS:
        config = _config(docs, process)
        prefix = f"XSELL_{process.upper()}_"
        spec = pod_spec(find(docs, "Deployment", process))
        [provision] = [c for c in spec["initContainers"] if c["name"] == "provision-nats"]
        [main] = spec["containers"]
        provision_env = {e["name"]: e.get("value") for e in provision["env"]}
        for url, ca, container in (
            (config[prefix + "NATS_URL"], config[prefix + "NATS_TLS_CA"], main),
            (provision_env["XSELL_NATS_URL"], provision_env["XSELL_NATS_TLS_CA"], provision),
        ):
            assert url == "tls://nats:4222", process
            [mount] = [m for m in container["volumeMounts"] if ca.startswith(m["mountPath"] + "/")]
            [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
            assert volume["secret"]["secretName"].startswith("nats-tls"), process
            assert volume["secret"]["items"] == [{"key": "ca.crt", "path": ca.rsplit("/", 1)[1]}], process


async def test_the_dev_certificate_is_what_the_clients_and_the_members_check(tmp_path: Path) -> None:
    """On a real server with the dev overlay's Secret nats-tls: a client that trusts its CA connects to the name the
    services use (nats); the certificate also carries the names the routes dial (not exercised here: a review ran 3
    members routing under those names with it) and client auth, which the routes' mutual TLS needs."""
    docs = render(K8S, "dev")
    nats_set = find(docs, "StatefulSet", "nats")
    [tls] = [v["secret"]["secretName"] for v in pod_spec(nats_set)["volumes"] if "secret" in v]
    [secret] = [doc for doc in of_kind(docs, "Secret") if name(doc) == tls]
    for key, value in secret["data"].items():
        (tmp_path / key).write_bytes(base64.b64decode(value))
    certificate = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"nats", "*.nats-headless", "nats.xsell-dev.svc"} <= set(names.get_values_for_type(x509.DNSName))
    assert certificate.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    server = NatsServer(
        tmp_path / "store", tls=TlsFiles(tmp_path / "ca.crt", tmp_path / "tls.crt", tmp_path / "tls.key")
    ).start()
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        client = await nats.connect(server.url, tls=context, tls_hostname="nats", allow_reconnect=False)
        await client.close()
    finally:
        server.stop()


async def test_a_renewed_certificate_is_reloaded_by_the_nats_pods_sidecar(tmp_path: Path) -> None:
    """The reload-tls container's own script, run against a real server: once the mounted files change, the server
    serves the new certificate (without it, only after a restart)."""
    nats_set = find(render(K8S, "dev"), "StatefulSet", "nats")
    [sidecar] = [c for c in pod_spec(nats_set)["containers"] if c["name"] == "reload-tls"]
    assert pod_spec(nats_set)["shareProcessNamespace"] is True
    tls, pid = tmp_path / "tls", tmp_path / "nats.pid"
    first = local_certificates(tmp_path / "first")
    tls.mkdir()
    for source, target in ((first.ca, "ca.crt"), (first.certificate, "tls.crt"), (first.key, "tls.key")):
        shutil.copy(source, tls / target)
    server = NatsServer(tmp_path / "store", tls=TlsFiles(tls / "ca.crt", tls / "tls.crt", tls / "tls.key"))
    server.start()
    script = sidecar["command"][-1].replace("/etc/nats-tls", str(tls)).replace("/var/run/nats/nats.pid", str(pid))
    environment = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "CHECK_SECONDS": "0.2"}
    assert server.process is not None
    pid.write_text(str(server.process.pid))
    reloader = await asyncio.create_subprocess_exec("sh", "-c", script, env=environment)
    try:
        await asyncio.sleep(0.5)  # the script has seen the first set
        renewed = local_certificates(tmp_path / "renewed")
        for source, target in ((renewed.ca, "ca.crt"), (renewed.certificate, "tls.crt"), (renewed.key, "tls.key")):
            shutil.copy(source, tls / target)

        async def serves_the_renewed_one() -> bool:
            context = ssl.create_default_context(cafile=str(renewed.ca))
            try:
                client = await nats.connect(server.url, tls=context, allow_reconnect=False, connect_timeout=2)
            except Exception:  # noqa: BLE001 - the old certificate still: not yet
                return False
            await client.close()
            return True

        await eventually(serves_the_renewed_one, timeout=15)
    finally:
        reloader.kill()
        await reloader.wait()
        server.stop()


def test_dev_generates_every_secret_its_pods_need() -> None:
    docs = render(K8S, "dev")
    secrets = {doc["metadata"]["name"] for doc in of_kind(docs, "Secret")}
    missing = set()
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        spec = workload["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for variable in container.get("env") or []:
                ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional") and ref["name"] not in secrets:
                    missing.add(ref["name"])
    assert missing == set()


def documented_secrets() -> dict[str, set[str]]:
    """docs/deploy.md's table of the Secrets an operator creates for prod: each name and the keys it lists."""
    text = (K8S.parents[1] / "docs" / "deploy.md").read_text()
    table = text.split("\n## prod\n", 1)[1].split("\n\n", 2)[1]
    documented: dict[str, set[str]] = {}
    for row in table.splitlines()[2:]:
        secret, keys = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = re.findall(r"`([^`]+)`", secret)[0]
        expanded = [names.replace("<process>", p) for p in PROCESSES] if "<process>" in names else [names]
        for each in expanded:
            documented[each] = set(re.findall(r"`([^`]+)`", keys))
    return documented


def test_every_secret_prod_needs_is_in_the_operators_table() -> None:
    """prod renders no Secrets: each one a pod or an Ingress names, and each key, is one docs/deploy.md tells the
    operator to create."""
    docs = render(K8S, "prod")
    needed: set[tuple[str, str]] = set()
    for workload in of_kind(docs, "Deployment", "StatefulSet"):
        spec = pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for variable in container.get("env") or []:
                ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    needed.add((ref["name"], ref["key"]))
        for volume in spec.get("volumes") or []:
            secret = volume.get("secret")
            if secret:
                needed |= {(secret["secretName"], item["key"]) for item in secret.get("items") or [{"key": ""}]}
    for ingress in of_kind(docs, "Ingress"):
        for tls in ingress["spec"].get("tls") or []:
            needed |= {(tls["secretName"], "tls.crt"), (tls["secretName"], "tls.key")}
    documented = documented_secrets()
    missing = sorted(
        f"{secret} {key}".strip()
        for secret, key in needed
        if secret not in documented or (key and key not in documented[secret])
    )
    assert missing == []


def test_a_setting_that_names_a_secret_file_requires_that_secret(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    assert optional_secret_files(docs) == []


def test_prod_channels_requires_the_fcm_secret_its_setting_names_and_dev_does_not(tmp_path: Path) -> None:
    prod = find(render(K8S, "prod"), "Deployment", "channels")
    [fcm] = [v for v in prod["spec"]["template"]["spec"]["volumes"] if v["name"] == "fcm-service-account"]
    assert fcm["secret"]["secretName"] == "channels-fcm" and fcm["secret"]["optional"] is False
    dev = find(render(K8S, "dev"), "Deployment", "channels")
    [fcm] = [v for v in dev["spec"]["template"]["spec"]["volumes"] if v["name"] == "fcm-service-account"]
    assert fcm["secret"]["optional"] is True
    # Without the prod patch, the rule names the setting and the Secret.
    copy = mutated(
        tmp_path,
        "overlays/prod/kustomization.yaml",
        "                  secretName: channels-fcm\n                  optional: false\n",
        "                  secretName: channels-fcm\n",
    )
    assert optional_secret_files(render(copy, "prod")) == [
        "Deployment channels: XSELL_CHANNELS_FCM_SERVICE_ACCOUNT names a file of the optional Secret channels-fcm"
    ]


def test_prod_channels_requires_its_signing_keys_and_dev_runs_on_the_dev_values() -> None:
    def optional(overlay: str) -> dict[str, bool]:
        [container] = find(render(K8S, overlay), "Deployment", "channels")["spec"]["template"]["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        keys = ("XSELL_CHANNELS_WEBHOOK_SECRET", "XSELL_CHANNELS_RECIPIENT_KEY_SECRET")
        return {key: refs[key]["optional"] for key in keys}

    assert optional("prod") == {"XSELL_CHANNELS_WEBHOOK_SECRET": False, "XSELL_CHANNELS_RECIPIENT_KEY_SECRET": False}
    assert optional("dev") == {"XSELL_CHANNELS_WEBHOOK_SECRET": True, "XSELL_CHANNELS_RECIPIENT_KEY_SECRET": True}


def _config(docs: list[Doc], process: str) -> dict[str, str]:
    return dict(find(docs, "ConfigMap", process)["data"])


def test_the_gateway_and_channels_agree_on_the_message_id_domain(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    channels, gateway = _config(docs, "channels"), _config(docs, "gateway")
    # A bounce names its e-mail by the Message-ID channels gave it; the gateway's mailbox reads it by this domain.
    assert gateway["XSELL_GATEWAY_MESSAGE_ID_DOMAIN"] == channels["XSELL_CHANNELS_MESSAGE_ID_DOMAIN"]


def test_prod_gets_bounces_from_the_internet_and_checks_callbacks_against_the_public_url() -> None:
    docs = render(K8S, "prod")
    channels, gateway = _config(docs, "channels"), _config(docs, "gateway")
    for value in (channels["XSELL_CHANNELS_RETURN_PATH"], channels["XSELL_CHANNELS_MESSAGE_ID_DOMAIN"]):
        assert not value.endswith(".invalid"), value
    # Signed SMS callbacks are checked against the URL the provider called: the tracking host, over https.
    http_hosts = [rule["host"] for rule in find(docs, "Ingress", "gateway-http")["spec"]["rules"]]
    assert gateway["XSELL_GATEWAY_WEBHOOK_PUBLIC_BASE_URL"] == f"https://{http_hosts[0]}"
    assert gateway["XSELL_GATEWAY_WEBHOOK_PUBLIC_BASE_URL"] == channels["XSELL_CHANNELS_TRACKING_BASE_URL"]
    # The mailbox has a load balancer of its own (the ingress controller carries HTTP only) ...
    [mailbox] = [
        service
        for service in of_kind(docs, "Service")
        if service["spec"].get("type") == "LoadBalancer"
        and any(port.get("targetPort") == "bounces" for port in service["spec"]["ports"])
    ]
    assert mailbox["spec"]["selector"] == {"app.kubernetes.io/name": "gateway"}
    assert [port["port"] for port in mailbox["spec"]["ports"]] == [25]
    # ... and the gateway's policy admits port 2525 from anywhere, while gRPC and HTTP come from the ingress only.
    policy = find(docs, "NetworkPolicy", "gateway")
    by_port = {port["port"]: rule.get("from") for rule in policy["spec"]["ingress"] for port in rule.get("ports") or []}
    assert by_port[2525] is None
    assert by_port[50051] and by_port[8080]


def nginx_bytes(size: str) -> float:
    """An nginx size (client_max_body_size): bytes, or k / m / g of 1024; 0 is no limit."""
    matched = re.fullmatch(r"(\d+)([kKmMgG]?)", size)
    assert matched, f"unreadable nginx size {size!r}"
    number = int(matched[1]) * 1024 ** " kmg".index((matched[2] or " ").lower())
    return number or float("inf")


def test_prod_ingress_passes_the_largest_request_the_gateway_reads() -> None:
    from gateway.esp_events import MAX_BODY
    from gateway.settings import GatewaySettings

    docs = render(K8S, "prod")
    gateway = _config(docs, "gateway")
    default = GatewaySettings.model_fields["max_request_bytes"].default
    # A unary gRPC request's body is its message and 5 bytes of framing.
    grpc = int(gateway.get("XSELL_GATEWAY_MAX_REQUEST_BYTES", default)) + 5
    largest = {"grpc": grpc, "http": MAX_BODY}
    ingresses = of_kind(docs, "Ingress")
    assert ingresses
    for ingress in ingresses:
        annotations = ingress["metadata"].get("annotations") or {}
        # ingress-nginx's own default when the annotation is absent.
        limit = nginx_bytes(annotations.get("nginx.ingress.kubernetes.io/proxy-body-size", "1m"))
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                port = path["backend"]["service"]["port"]["name"]
                assert limit >= largest[port], f"Ingress {name(ingress)} refuses bodies over {limit} bytes"


def test_prod_publishes_the_links_pixels_and_webhooks_and_not_the_dashboard() -> None:
    """The public host routes what recipients and providers reach (each HTTP route the gateway serves but the dashboard
    and its health check), found in the gateway's source, and nothing else."""
    routes = {
        path
        for source in (K8S.parents[1] / "gateway").glob("*.py")
        for path in re.findall(r"add_(?:get|post)\(\s*\"([^\"]+)\"", source.read_text())
    }
    public = {path for path in routes if not path.startswith(("/dashboard", "/healthz"))}
    assert public and any(path.startswith("/webhooks/") for path in public)
    (ingress,) = [i for i in of_kind(render(K8S, "prod"), "Ingress") if name(i) == "gateway-http"]
    prefixes = [path["path"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert all(path["pathType"] == "Prefix" for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"])
    for route in public:
        assert any(route.startswith(prefix) for prefix in prefixes), f"{route} is not published on the public host"
    for private in ("/dashboard", "/dashboard/api/report", "/healthz"):
        assert not any(private.startswith(prefix) for prefix in prefixes), f"{private} is on the public host"


def test_prod_mounts_the_institutions_catalogs_and_the_services_load_them(tmp_path: Path) -> None:
    from services.campaigns.content_files import load_library
    from services.campaigns.triggers import load_trigger_catalog
    from services.segments.catalog import Catalog, definitions_from_document, validate_definitions

    docs = render(K8S, "prod")
    files: dict[str, str] = {}
    for process, generated in (("campaigns", "campaigns-catalogs"), ("segments", "segments-catalog")):
        workload = find(docs, "Deployment", process)
        [container] = [c for c in pod_spec(workload)["containers"] if c["name"] == process]
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/xsell/catalogs"]
        assert mount["readOnly"] is True
        [volume] = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
        # The generated name carries the content's hash: an edited catalog rolls the pods.
        assert re.fullmatch(rf"{generated}-[a-z0-9]+", volume["configMap"]["name"])
        data = find(docs, "ConfigMap", volume["configMap"]["name"])["data"]
        for setting, path in _config(docs, process).items():
            if path.startswith("/etc/xsell/catalogs/"):
                key = path.removeprefix("/etc/xsell/catalogs/")
                assert key in data, (setting, key)
                (tmp_path / key).write_text(data[key])
                files[setting] = str(tmp_path / key)
    assert len(files) == 4, sorted(files)
    library = load_library(
        files["XSELL_CAMPAIGNS_PRODUCT_CATALOG_FILE"], files["XSELL_CAMPAIGNS_TEMPLATE_REGISTRY_FILE"]
    )
    assert library.products.products and library.registry.sms
    assert load_trigger_catalog(files["XSELL_CAMPAIGNS_TRIGGER_CATALOG_FILE"])
    definitions = definitions_from_document(yaml.safe_load(Path(files["XSELL_SEGMENTS_CATALOG_FILE"]).read_text()))
    accepted, problems = validate_definitions(definitions, Catalog())
    assert accepted and not problems


@pytest.mark.parametrize("process", PROCESSES)
def test_each_process_reads_its_settings_from_what_the_manifests_give_it(
    overlay: tuple[str, list[Doc]], process: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded as the process loads them: a value its settings refuse (a word for a number, a list that is not JSON)
    would stop it at start, and a name they lack would be ignored (`command_violations` names it)."""
    _, docs = overlay
    [container] = [c for c in pod_spec(find(docs, "Deployment", process))["containers"] if c["name"] == process]
    given = {variable: value for variable, value in variables(docs, container).items() if value is not None}
    for variable in [v for v in os.environ if v.startswith(("XSELL_", "OTEL_"))]:
        monkeypatch.delenv(variable)
    for variable, value in given.items():
        monkeypatch.setenv(variable, value)
    settings_type = settings_class(MAIN_MODULES[process], [])
    assert settings_type is not None
    settings = settings_type()
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    assert {v.removeprefix(prefix).lower() for v in given if v.startswith(prefix)} <= settings.model_fields_set
    assert settings.model_dump()["grpc_host"] == "0.0.0.0"
    assert settings.model_dump()["metrics_port"] == METRICS_PORT


def mutated(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of deploy/k8s with one text replaced exactly once in one file."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    path = copy / file
    text = path.read_text()
    assert text.count(old) == 1, f"the mutation must hit exactly one place in {file}"
    path.write_text(text.replace(old, new))
    return copy


MUTATIONS = {
    "writable root filesystem": (
        "base/segments.yaml",
        '            readOnlyRootFilesystem: true\n            capabilities:\n              drop: ["ALL"]\n'
        "          volumeMounts:\n            - name: var",
        '            readOnlyRootFilesystem: false\n            capabilities:\n              drop: ["ALL"]\n'
        "          volumeMounts:\n            - name: var",
        "Deployment segments container segments: readOnlyRootFilesystem is not true",
    ),
    "root user": (
        "base/databases/channels-db.yaml",
        "runAsUser: 999",
        "runAsUser: 0",
        "StatefulSet channels-db: pod securityContext.runAsUser is not a fixed non-zero uid",
    ),
    "no memory limit": (
        "base/attribution.yaml",
        '              cpu: "1"\n              memory: 512Mi\n',
        '              cpu: "1"\n',
        "Deployment attribution container attribution: no memory limits",
    ),
    "tcp readiness probe": (
        "base/campaigns.yaml",
        "          readinessProbe:\n            grpc:\n              port: 50062",
        "          readinessProbe:\n            tcpSocket:\n              port: 50062",
        "campaigns: readinessProbe is not a gRPC health check on port 50062",
    ),
    "another service reaches a database": (
        "base/network-policies.yaml",
        '      app.kubernetes.io/name: segments-db\n  policyTypes: ["Ingress", "Egress"]\n  ingress:\n    - from:\n',
        '      app.kubernetes.io/name: segments-db\n  policyTypes: ["Ingress", "Egress"]\n  ingress:\n    - from:\n'
        "        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: attribution\n",
        "segments-db admits ['attribution', 'segments'], expected only ['segments']",
    ),
    "a service open to the cluster": (
        "base/network-policies.yaml",
        "  ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n"
        "              app.kubernetes.io/name: gateway\n      ports:\n        - protocol: TCP\n          port: 50064\n",
        "  ingress:\n    - ports:\n        - protocol: TCP\n          port: 50064\n",
        "attribution admits ['*'], expected only ['gateway']",
    ),
    "no default deny": (
        "base/network-policies.yaml",
        "  name: default-deny\nspec:\n  podSelector: {}\n",
        "  name: default-deny\nspec:\n  podSelector:\n    matchLabels:\n      nothing: here\n",
        "no default-deny NetworkPolicy (all pods, Ingress and Egress, no rules)",
    ),
    "internal service exposed": (
        "base/attribution.yaml",
        "spec:\n  type: ClusterIP\n",
        "spec:\n  type: LoadBalancer\n",
        "Service attribution is reachable from outside the cluster (LoadBalancer)",
    ),
    "periodic fsync": (
        "base/nats.conf",
        "  sync_interval: always\n",
        "  sync_interval: 2m\n",
        "nats.conf: jetstream { sync_interval: always } is missing; acknowledged writes could be lost",
    ),
    "account store over the members'": (
        "base/nats.yaml",
        "            - name: NATS_XSELL_STORE\n              value: 24GB\n",
        "            - name: NATS_XSELL_STORE\n              value: 30GB\n",
        "nats write-config: NATS_XSELL_STORE 30GB is more than the 3 members' NATS_MAX_FILE_STORE 9GB: the streams "
        "would be given byte limits the members cannot hold",
    ),
    "the server's member store not the one checked": (
        "base/nats.yaml",
        '            # account XSELL\'s, must say the same: grow them together (docs/deploy.md, "JetStream storage").\n'
        "            - name: NATS_MAX_FILE_STORE\n              value: 9GB\n",
        "            - name: NATS_MAX_FILE_STORE\n              value: 8GB\n",
        "nats: the server's NATS_MAX_FILE_STORE 8GB is not the one write-config checked XSELL's store against (9GB)",
    ),
    "a NATS password in the server's env": (
        "base/nats.yaml",
        "            - name: GOMEMLIMIT\n              value: 900MiB\n",
        "            - name: GOMEMLIMIT\n              value: 900MiB\n            - name: NATS_PASSWORD_FEEDS\n"
        "              valueFrom:\n                secretKeyRef:\n                  name: nats-users\n"
        "                  key: feeds\n",
        "nats nats: holds the NATS users' passwords (NATS_PASSWORD_FEEDS)",
    ),
    "member store over its volume": (
        "base/nats.yaml",
        '            # (docs/deploy.md, "JetStream storage").\n'
        "            - name: NATS_MAX_FILE_STORE\n              value: 9GB\n",
        '            # (docs/deploy.md, "JetStream storage").\n'
        "            - name: NATS_MAX_FILE_STORE\n              value: 11GB\n",
        "nats write-config: NATS_MAX_FILE_STORE 11GB is more than the members' volume 10Gi",
    ),
    "member store written in the file": (
        "base/nats.conf",
        "  max_file_store: $NATS_MAX_FILE_STORE\n",
        "  max_file_store: 9GB\n",
        "nats.conf: max_file_store is not $NATS_MAX_FILE_STORE",
    ),
    "nats client port in clear": (
        "base/nats.conf",
        '  handshake_first: "300ms"\n',
        "",
        "nats.conf: the client port has no tls { ... handshake_first } (passwords and events in clear)",
    ),
    "nats members advertising pod addresses": (
        "base/nats.conf",
        "  no_advertise: true\n",
        "",
        "nats.conf: the routes have no tls { }, or members advertise their pod addresses",
    ),
    "nats image off the tested release line": (
        "base/nats.yaml",
        "move both together. Pin the digest in the prod overlay's images:.\n          image: nats:2.15.1-alpine\n",
        "move both together.\n          image: nats:2.11-alpine\n",
        f"nats nats: image nats:2.11-alpine is not a {nats_line_tested()}.x release, the line the configuration is "
        "tested with",
    ),
    "nats heap limit at the container's": (
        "base/nats.yaml",
        "              value: 900MiB\n",
        "              value: 1GiB\n",
        "nats: GOMEMLIMIT 1GiB is not 80-90 % of the container's memory limit (1073741824 bytes)",
    ),
    "single nats member": (
        "base/nats.yaml",
        "  replicas: 3\n",
        "  replicas: 1\n",
        "nats has 1 replicas, expected 3",
    ),
    "gateway started from a module the image lacks": (
        "base/gateway.yaml",
        'command: ["python", "-m", "gateway"]',
        'command: ["python", "-m", "services.gateway"]',
        "Deployment gateway container gateway: python -m services.gateway names no module the image can run",
    ),
    "a process started as another": (
        "base/attribution.yaml",
        'command: ["python", "-m", "services.attribution"]',
        'command: ["python", "-m", "services.segments"]',
        "Deployment attribution container attribution: runs python -m services.segments, expected python -m "
        "services.attribution",
    ),
    "misspelt setting": (
        "base/channels.yaml",
        '  XSELL_CHANNELS_SMTP_STARTTLS: "true"\n',
        '  XSELL_CHANNELS_SMTP_START_TLS: "true"\n',
        "Deployment channels container channels: XSELL_CHANNELS_SMTP_START_TLS is not a setting of ChannelsSettings; "
        "it would be ignored",
    ),
    "another process's setting": (
        "base/campaigns.yaml",
        "  XSELL_CAMPAIGNS_SEGMENTS_TARGET: dns:///segments-grpc:50061\n",
        "  XSELL_GATEWAY_SEGMENTS_TARGET: dns:///segments-grpc:50061\n",
        "Deployment campaigns container campaigns: XSELL_GATEWAY_SEGMENTS_TARGET is not a setting of "
        "CampaignsSettings; it would be ignored",
    ),
    "grace period shorter than the shutdown": (
        "base/segments.yaml",
        "      terminationGracePeriodSeconds: 50\n",
        "      terminationGracePeriodSeconds: 30\n",
        "segments: terminationGracePeriodSeconds 30 is less than its preStop sleep (5 s), its longest shutdown with a "
        "10 s grace (37 s) and 5 s to spare (47 s)",
    ),
    "shutdown grace raised past the period": (
        "base/attribution.yaml",
        "  XSELL_ATTRIBUTION_LOG_LEVEL: info\n",
        '  XSELL_ATTRIBUTION_LOG_LEVEL: info\n  XSELL_ATTRIBUTION_SHUTDOWN_GRACE_SECONDS: "30"\n',
        "attribution: terminationGracePeriodSeconds 50 is less than its preStop sleep (5 s), its longest shutdown "
        "with a 30 s grace (77 s) and 5 s to spare (87 s)",
    ),
    "no preStop sleep": (
        "base/channels.yaml",
        "            preStop:\n              sleep:\n                seconds: 5\n",
        "            preStop:\n              sleep:\n                seconds: 0\n",
        "channels: no preStop sleep; calls still come while the endpoints drop the pod",
    ),
    "a database's budget that blocks every drain": (
        "base/databases/segments-db.yaml",
        "  maxUnavailable: 1\n",
        "  maxUnavailable: 0\n",
        "PodDisruptionBudget segments-db lets no pod of StatefulSet segments-db (1 replica) be evicted: a node drain "
        "would wait for ever",
    ),
    "a budget that keeps every replica": (
        "base/campaigns.yaml",
        "spec:\n  maxUnavailable: 1\n",
        "spec:\n  minAvailable: 100%\n",
        # dev's autoscaler allows one replica.
        "PodDisruptionBudget campaigns lets no pod of Deployment campaigns (1 replica) be evicted: a node drain would "
        "wait for ever",
    ),
    "a database's metrics port open to anyone": (
        "base/network-policies.yaml",
        "    - from:\n        - namespaceSelector:\n            matchLabels:\n"
        "              kubernetes.io/metadata.name: monitoring\n      ports:\n        - protocol: TCP\n"
        "          port: 9187\n",
        "    - ports:\n        - protocol: TCP\n          port: 9187\n",
        "segments-db's metrics port admits ['*'], expected Prometheus only",
    ),
    "a gRPC target through the ClusterIP Service": (
        "base/gateway.yaml",
        "  XSELL_GATEWAY_CHANNELS_TARGET: dns:///channels-grpc:50063\n",
        "  XSELL_GATEWAY_CHANNELS_TARGET: channels:50063\n",
        "gateway XSELL_GATEWAY_CHANNELS_TARGET is 'channels:50063', not dns:///<headless Service>:<port>: calls would "
        "stick to one pod",
    ),
    "a dns:/// target on the ClusterIP Service": (
        "base/campaigns.yaml",
        "  XSELL_CAMPAIGNS_SEGMENTS_TARGET: dns:///segments-grpc:50061\n",
        "  XSELL_CAMPAIGNS_SEGMENTS_TARGET: dns:///segments:50061\n",
        "campaigns XSELL_CAMPAIGNS_SEGMENTS_TARGET: Service segments is not headless (clusterIP: None): one virtual IP",
    ),
    "a headless Service selecting another service's pods": (
        "base/attribution.yaml",
        "  clusterIP: None\n  selector:\n    app.kubernetes.io/name: attribution\n",
        "  clusterIP: None\n  selector:\n    app.kubernetes.io/name: segments\n",
        "gateway XSELL_GATEWAY_ATTRIBUTION_TARGET: Service attribution-grpc selects ['segments'], expected the "
        "attribution pods",
    ),
    "a headless Service listing pods that are not ready": (
        "base/channels.yaml",
        "  clusterIP: None\n",
        "  clusterIP: None\n  publishNotReadyAddresses: true\n",
        "gateway XSELL_GATEWAY_CHANNELS_TARGET: Service channels-grpc lists pods that are not ready",
    ),
    "a gRPC target on a port the Service lacks": (
        "base/channels.yaml",
        "  XSELL_CHANNELS_SEGMENTS_TARGET: dns:///segments-grpc:50061\n",
        "  XSELL_CHANNELS_SEGMENTS_TARGET: dns:///segments-grpc:50063\n",
        "channels XSELL_CHANNELS_SEGMENTS_TARGET: Service segments-grpc has no port 50063",
    ),
    "a headless Service's port reaching the metrics port": (
        "base/segments.yaml",
        "  clusterIP: None\n  selector:\n    app.kubernetes.io/name: segments\n  ports:\n    - name: grpc\n"
        "      port: 50061\n      targetPort: grpc\n",
        "  clusterIP: None\n  selector:\n    app.kubernetes.io/name: segments\n  ports:\n    - name: grpc\n"
        "      port: 50061\n      targetPort: metrics\n",
        "gateway XSELL_GATEWAY_SEGMENTS_TARGET: port 50061 of Service segments-grpc does not reach segments's gRPC "
        "port 50061",
    ),
    "campaigns' egress to segments on another port": (
        "base/network-policies.yaml",
        "          port: 50061\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n"
        "  name: channels\n",
        "          port: 50062\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n"
        "  name: channels\n",
        "campaigns XSELL_CAMPAIGNS_SEGMENTS_TARGET: the NetworkPolicies do not let campaigns reach the segments pods "
        "on 50061",
    ),
    "spans kept local": (
        "base/channels.yaml",
        "  OTEL_EXPORTER_OTLP_ENDPOINT: http://otel-collector:4317\n",
        "",
        "channels: OTEL_EXPORTER_OTLP_ENDPOINT is not the collector ('')",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_broken_manifest_is_caught(mutation: str, tmp_path: Path) -> None:
    file, old, new, expected = MUTATIONS[mutation]
    found = violations(render(mutated(tmp_path, file, old, new), "dev"), "dev")
    assert expected in found


def test_a_prod_secret_in_the_repository_and_an_unspread_deployment_are_caught(tmp_path: Path) -> None:
    copy = mutated(tmp_path, "overlays/prod/kustomization.yaml", "  - ../../components/zone-spread\n", "")
    (copy / "overlays/prod/kustomization.yaml").write_text(
        (copy / "overlays/prod/kustomization.yaml").read_text()
        + "secretGenerator:\n  - name: xsell-tracking\n    literals: [secret=in-git]\n"
    )
    found = violations(render(copy, "prod"), "prod")
    assert any(f.startswith("Secret xsell-tracking-") for f in found)
    assert "Deployment gateway is not spread across zones and nodes" in found


def test_a_schema_error_is_caught(tmp_path: Path) -> None:
    copy = mutated(tmp_path, "base/segments.yaml", "            periodSeconds: 5\n", "            periodSecs: 5\n")
    segments = find(render(copy, "dev"), "Deployment", "segments")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(segments, KUBERNETES_VERSIONS[0], strict=True)
