"""Starts and stops the whole local stack: NATS, the four services and the gateway (sinks are started by the caller)."""

import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.nats_server import NatsServer, free_ports
from devstack.nats_tls import TlsFiles, local_certificates
from services import nats_access

SERVICES = ("segments", "campaigns", "channels", "attribution")
DEFAULT_PORTS = {
    "nats": 4222,
    "smtp": 1025,
    # The gateway's return-path mailbox: bounces and complaint reports come back here.
    "bounces": 2525,
    # Local provider servers (devstack.provider_sinks): Exotel SMS, WhatsApp Cloud API, FCM, signed webhooks.
    "sms": 8091,
    "whatsapp": 8092,
    "push": 8093,
    "webhook": 8094,
    "gateway": 50051,
    "gateway_http": 8080,
    "segments": 50061,
    "campaigns": 50062,
    "channels": 50063,
    "attribution": 50064,
}
NATS_STORE = "1GB"
"""The JetStream store `make run` gives account XSELL: each stream may fill its share of it (services/streams.py)."""
# Prometheus /metrics of each process.
DEFAULT_METRICS_PORTS = {"segments": 9461, "campaigns": 9462, "channels": 9463, "attribution": 9464, "gateway": 9465}
PORT_ROLES = {
    "nats": "NATS, TLS",
    "smtp": "the SMTP sink",
    "bounces": "the gateway's bounce mailbox",
    "sms": "the SMS provider sink",
    "whatsapp": "the WhatsApp provider sink",
    "push": "the push provider sink",
    "webhook": "the webhook receiver sink",
    "gateway": "the gateway's gRPC",
    "gateway_http": "the gateway's HTTP",
    "segments": "the segments service's gRPC",
    "campaigns": "the campaigns service's gRPC",
    "channels": "the channels service's gRPC",
    "attribution": "the attribution service's gRPC",
}
"""What listens on each port of Ports, for the message when one is taken."""
PORT_OFFSET_VARIABLE = "XSELL_DEV_PORT_OFFSET"
"""Added to every default port, so a second `make run` (another clone) can run beside the first."""


class PortsUnavailable(Exception):
    """The stack cannot listen where it was told to: the message names the port, its role and what to do."""


@dataclass
class Ports:
    """Where each part listens; `Ports.free()` picks unused ones for tests."""

    nats: int
    smtp: int
    bounces: int
    sms: int
    whatsapp: int
    push: int
    webhook: int
    gateway: int
    gateway_http: int
    segments: int
    campaigns: int
    channels: int
    attribution: int
    metrics: dict[str, int]

    @classmethod
    def defaults(cls, offset: int = 0) -> "Ports":
        """The ports `make run` listens on, each moved up by `offset`."""
        return cls(
            **{name: port + offset for name, port in DEFAULT_PORTS.items()},
            metrics={name: port + offset for name, port in DEFAULT_METRICS_PORTS.items()},
        )

    @classmethod
    def from_environment(cls, environment: Mapping[str, str]) -> "Ports":
        """The defaults moved by XSELL_DEV_PORT_OFFSET; PortsUnavailable when it is not a whole number from 0 to the
        offset that moves the highest port to 65535."""
        text = environment.get(PORT_OFFSET_VARIABLE, "").strip() or "0"
        highest = 65_535 - max(*DEFAULT_PORTS.values(), *DEFAULT_METRICS_PORTS.values())
        try:
            offset: int | None = int(text)
        except ValueError:
            offset = None
        if offset is None or not 0 <= offset <= highest:
            raise PortsUnavailable(
                f"{PORT_OFFSET_VARIABLE}={text} is not a whole number from 0 to {highest}; "
                f"e.g. {PORT_OFFSET_VARIABLE}=100 moves every port up by 100"
            )
        return cls.defaults(offset)

    def roles(self, without: Collection[str] = ()) -> list[tuple[int, str]]:
        """Every port but those named in `without` (Ports' field names), with what listens on it."""
        named = [(getattr(self, name), PORT_ROLES[name]) for name in DEFAULT_PORTS if name not in without]
        return named + [(port, f"the {name} metrics") for name, port in self.metrics.items()]

    @classmethod
    def free(cls, smtp: int | None = None) -> "Ports":
        ports = iter(free_ports(len(DEFAULT_PORTS) + len(DEFAULT_METRICS_PORTS)))
        chosen = {name: next(ports) for name in DEFAULT_PORTS}
        if smtp is not None:
            chosen["smtp"] = smtp
        return cls(**chosen, metrics={name: next(ports) for name in DEFAULT_METRICS_PORTS})


def taken_ports(ports: list[tuple[int, str]], host: str = "127.0.0.1") -> list[tuple[int, str]]:
    """The ports of `ports` something already listens on. Bound as the servers bind them (SO_REUSEADDR), so a port
    whose last connection only lingers in TIME_WAIT counts as free; gRPC's SO_REUSEPORT is left off, so a port another
    stack's gRPC server holds counts as taken (gRPC itself would share it, and answer for the other stack)."""
    taken = []
    for port, role in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                taken.append((port, role))
    return taken


def ports_taken_message(taken: list[tuple[int, str]]) -> str:
    """One line: the first port taken and its role, how many more are, the likely cause and the way around it."""
    (port, role), *more = taken
    others = ""
    if more:
        listed = ", ".join(str(other) for other, _ in more[:4]) + (", ..." if len(more) > 4 else "")
        others = f", and {len(more)} more of the stack's ports ({listed})"
    return (
        f"port {port} ({role}) is already in use{others}: another `make run` is probably running, here or in another "
        f"clone. Stop it (Ctrl-C), or move every port: {PORT_OFFSET_VARIABLE}=100 make run"
    )


def dev_api_key(var_dir: Path) -> str:
    """The local admin key, made once per var/ and kept there (never used outside a dev machine)."""
    path = var_dir / "dev-api-key"
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    key = f"xsk_dev_{secrets.token_urlsafe(24)}"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def nats_passwords(var_dir: Path) -> dict[str, str]:
    """The local NATS users' passwords, made once per var/ and kept there (var/nats-users.json); the operator's and the
    feeds' also as var/nats-<user>.env (XSELL_NATS_USER and XSELL_NATS_PASSWORD), for the dead-letter tool and a
    bulk feed run by hand."""
    path = var_dir / "nats-users.json"
    passwords: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if set(passwords) != set(nats_access.USERS):
        var_dir.mkdir(parents=True, exist_ok=True)
        passwords = {user: passwords.get(user) or nats_access.new_password() for user in nats_access.USERS}
        path.touch(mode=0o600)
        path.write_text(json.dumps(passwords, indent=2) + "\n")
    for user in (nats_access.OPERATOR_USER, nats_access.FEEDS_USER):
        env_file = var_dir / f"nats-{user}.env"
        env_file.touch(mode=0o600)
        env_file.write_text(f"XSELL_NATS_USER={user}\nXSELL_NATS_PASSWORD={passwords[user]}\n")
    return passwords


@dataclass
class Stack:
    """The processes of one local stack, started in dependency order and stopped in reverse."""

    var_dir: Path
    ports: Ports
    api_key: str
    tracking_secret: str = "dev-tracking-secret-change-me"
    extra_env: dict[str, str] = field(default_factory=dict)
    nats: NatsServer | None = None
    nats_passwords: dict[str, str] = field(default_factory=dict)
    """Each NATS user's password (nats_passwords(var_dir), read at start); the server then admits only them."""
    nats_tls: TlsFiles | None = None
    """The NATS server's certificate and the CA the processes check it against (var/nats-tls/, made at start)."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    held_lock: int | None = None
    """`make run`'s lock on var_dir (a file descriptor), inherited by each service process: killed with -9, the
    parent's lock would end while its services still ran, and a second stack could start on the same data."""

    @property
    def gateway_target(self) -> str:
        return f"127.0.0.1:{self.ports.gateway}"

    @property
    def gateway_http(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway_http}"

    def _env(self) -> dict[str, str]:
        p = self.ports
        var = str(self.var_dir.resolve())
        assert self.nats is not None, "the processes' environment names the NATS server start() started"
        nats_url = self.nats.url
        env = dict(os.environ)
        env.setdefault("OTEL_BSP_SCHEDULE_DELAY", "500")
        for name in (*SERVICES, "gateway"):
            prefix = f"XSELL_{name.upper()}_"
            env[prefix + "VAR_DIR"] = var
            env[prefix + "NATS_URL"] = nats_url
            env[prefix + "GRPC_PORT"] = str(getattr(p, name))
            env[prefix + "METRICS_PORT"] = str(p.metrics[name])
            if name in self.nats_passwords:
                env[prefix + "NATS_USER"] = name
                env[prefix + "NATS_PASSWORD"] = self.nats_passwords[name]
                env[prefix + "NATS_JETSTREAM_API"] = nats_access.IMPORTED_API
                if self.nats_tls is not None:
                    env[prefix + "NATS_TLS_CA"] = str(self.nats_tls.ca.resolve())
        env.update(
            {
                "XSELL_CAMPAIGNS_SEGMENTS_TARGET": f"127.0.0.1:{p.segments}",
                "XSELL_CHANNELS_SMTP_PORT": str(p.smtp),
                # Bounces and complaint reports go back to the gateway's return-path mailbox.
                "XSELL_CHANNELS_RETURN_PATH": "bounces@xsell.local",
                "XSELL_GATEWAY_BOUNCE_MAILBOX_PORT": str(p.bounces),
                "XSELL_GATEWAY_MESSAGE_ID_DOMAIN": "xsell.local",
                "XSELL_CHANNELS_SMS_BASE_URL": f"http://127.0.0.1:{p.sms}",
                "XSELL_CHANNELS_WHATSAPP_BASE_URL": f"http://127.0.0.1:{p.whatsapp}",
                "XSELL_CHANNELS_PUSH_BASE_URL": f"http://127.0.0.1:{p.push}",
                "XSELL_CHANNELS_SMS_STATUS_CALLBACK_URL": f"{self.gateway_http}/webhooks/sms/exotel/dev-sms-callback",
                "XSELL_GATEWAY_SMS_CALLBACK_TOKEN": "dev-sms-callback",
                # The provider sinks sign WhatsApp status webhooks with this (devstack.provider_sinks).
                "XSELL_GATEWAY_WHATSAPP_APP_SECRET": "dev-whatsapp-app-secret",
                # Consent and suppressions are asked again at the moment of sending.
                "XSELL_CHANNELS_SEGMENTS_TARGET": f"127.0.0.1:{p.segments}",
                "XSELL_CHANNELS_TRACKING_BASE_URL": self.gateway_http,
                "XSELL_CHANNELS_TRACKING_SECRET": self.tracking_secret,
                "XSELL_GATEWAY_HTTP_PORT": str(p.gateway_http),
                "XSELL_GATEWAY_TRACKING_SECRET": self.tracking_secret,
                "XSELL_GATEWAY_BOOTSTRAP_API_KEY": self.api_key,
                **{f"XSELL_GATEWAY_{name.upper()}_TARGET": f"127.0.0.1:{getattr(p, name)}" for name in SERVICES},
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> "Stack":
        logs = self.var_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.nats_passwords = nats_passwords(self.var_dir)
        # Over TLS, as in Kubernetes: the passwords and events (addresses, numbers) never cross in clear.
        self.nats_tls = local_certificates(self.var_dir / "nats-tls")
        self.nats = NatsServer(
            self.var_dir / "nats",
            port=self.ports.nats,
            authorization=nats_access.authorization_config(self.nats_passwords, store=NATS_STORE),
            tls=self.nats_tls,
        ).start(logs / "nats.log")
        tool_env = f"XSELL_NATS_URL={self.nats.url}\nXSELL_NATS_TLS_CA={self.nats_tls.ca.resolve()}\n"
        for user in (nats_access.OPERATOR_USER, nats_access.FEEDS_USER):
            env_file = self.var_dir / f"nats-{user}.env"
            env_file.write_text(env_file.read_text() + tool_env)
        env = self._env()
        # The services' accounts may make no stream or durable: the provisioner makes them first.
        provisioner = nats_access.PROVISIONER_USER
        subprocess.run(
            [sys.executable, "-m", "services.nats_provision"],
            env=env
            | {
                "XSELL_NATS_URL": self.nats.url,
                "XSELL_NATS_TLS_CA": str(self.nats_tls.ca.resolve()),
                "XSELL_NATS_USER": provisioner,
                "XSELL_NATS_PASSWORD": self.nats_passwords[provisioner],
            },
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        modules = {name: f"services.{name}" for name in SERVICES} | {"gateway": "gateway"}
        try:
            for name, module in modules.items():
                log_file = (logs / f"{name}.log").open("ab")
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", module],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    pass_fds=() if self.held_lock is None else (self.held_lock,),
                )
            for name in modules:
                self.wait_serving(name, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_serving(self, name: str, timeout: float) -> None:
        """Blocks until the process's gRPC health check says SERVING."""
        port = getattr(self.ports, name)
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                process = self.processes[name]
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {process.returncode}; see {self.var_dir / 'logs' / (name + '.log')}"
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"{name} is not SERVING on port {port} after {timeout}s")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to every process (gateway first), wait for their graceful shutdown, then NATS."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None

    def exit_codes(self) -> dict[str, int | None]:
        return {name: process.poll() for name, process in self.processes.items()}
