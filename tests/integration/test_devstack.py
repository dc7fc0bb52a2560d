"""`make run`'s own parts against real sockets, files and a real nats-server: a port another process holds is named
before anything starts, the span store keeps a bounded size, and NATS's readiness probe leaves no error in its log."""

import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.__main__ import hold
from devstack.nats_server import NatsServer, free_port
from devstack.nats_tls import local_certificates
from devstack.span_store import PREVIOUS, cap_span_store
from devstack.stack import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, PORT_OFFSET_VARIABLE, Ports, taken_ports
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def listener() -> Iterator[int]:
    """A port something listens on, as another program's server would."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", free_port()))
        server.listen()
        yield server.getsockname()[1]


def test_a_listening_port_is_taken_and_a_closed_one_is_not(listener: int) -> None:
    closed = free_port()
    assert taken_ports([(listener, "held"), (closed, "free")]) == [(listener, "held")]


def _free_offset() -> int:
    """An offset that puts every port of the stack where nothing listens now."""
    highest = 65_535 - max(*DEFAULT_PORTS.values(), *DEFAULT_METRICS_PORTS.values())
    for offset in random.sample(range(1, highest + 1), 50):
        if not taken_ports(Ports.defaults(offset).roles()):
            return offset
    pytest.skip("no offset found with all of the stack's ports free")


def _make_run(tmp_path: Path, offset: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, **{PORT_OFFSET_VARIABLE: offset})
    return subprocess.run(
        [sys.executable, "-m", "devstack", "--var-dir", str(tmp_path / "var")],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_run_names_a_taken_port_and_starts_nothing(tmp_path: Path) -> None:
    offset = _free_offset()
    smtp = Ports.defaults(offset).smtp
    with socket.socket() as other:
        other.bind(("127.0.0.1", smtp))
        other.listen()
        run = _make_run(tmp_path, str(offset))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"the stack did not start: port {smtp} (the SMTP sink) is already in use: another")
    assert f"{PORT_OFFSET_VARIABLE}=100 make run" in run.stderr
    assert not (tmp_path / "var").exists()


def test_a_second_make_run_on_the_same_var_dir_is_refused_even_on_other_ports(tmp_path: Path) -> None:
    first = hold(tmp_path / "var")  # as the first `make run` holds it
    assert first is not None
    try:
        run = _make_run(tmp_path, str(_free_offset()))
    finally:
        first.close()
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"the stack did not start: another `make run` uses {tmp_path / 'var'}/")


def test_the_lock_outlives_a_killed_make_run_while_a_service_it_started_runs(tmp_path: Path) -> None:
    """Stack passes the lock to each service process (held_lock): `kill -9` of make run left its services running on
    var/, and the lock, held by make run alone, let a second stack start on the same data."""
    lock = hold(tmp_path)
    assert lock is not None
    service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(lock.fileno(),))
    try:
        lock.close()  # make run, killed
        assert hold(tmp_path) is None
    finally:
        service.kill()
        service.wait()
    again = hold(tmp_path)
    assert again is not None
    again.close()


def test_make_run_refuses_an_offset_that_is_not_a_number(tmp_path: Path) -> None:
    run = _make_run(tmp_path, "lots")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"{PORT_OFFSET_VARIABLE}=lots is not a whole number" in run.stderr


def test_the_span_store_keeps_at_most_its_cap_per_service(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    cap = 1000
    line = b'{"name": "SELECT"}\n'
    for batch in range(200):  # as the exporter writes: a batch appended at a time, the file opened anew
        with (traces / "campaigns.jsonl").open("ab") as file:
            file.write(line * 5)
        with (traces / "gateway.jsonl").open("ab") as file:
            file.write(line if batch == 0 else b"")
        cap_span_store(traces, cap)
        kept = sum(path.stat().st_size for path in traces.glob("campaigns*.jsonl"))
        assert kept <= cap + len(line) * 5
    assert sorted(path.name for path in traces.iterdir()) == [
        "campaigns.jsonl",
        f"campaigns{PREVIOUS}",
        "gateway.jsonl",
    ]
    assert (traces / "gateway.jsonl").read_bytes() == line  # under its cap: left alone
    assert cap_span_store(traces, 0) == []


async def test_nats_over_tls_starts_without_a_handshake_error_in_its_log(tmp_path: Path) -> None:
    log = tmp_path / "nats.log"
    server = NatsServer(tmp_path / "nats", tls=local_certificates(tmp_path / "pki")).start(log)
    try:
        # A client that hangs up before its handshake, as the readiness probe once did: once the server has logged
        # this one's error, it has handled the probe's connection too, which came first.
        with socket.create_connection((server.host, server.port)) as client:
            client_port = client.getsockname()[1]

        async def handshake_errors() -> list[str]:
            lines = [line for line in log.read_text().splitlines() if "TLS handshake error" in line]
            return lines if any(f"127.0.0.1:{client_port} " in line for line in lines) else []

        errors = await eventually(handshake_errors)
    finally:
        server.stop()
    assert len(errors) == 1, errors


_FIRST_REPORT_ID = """\
from email import message_from_bytes
from devstack.smtp_sink import delivery_report
report = delivery_report(reporting_mta="sink.xsell.local", return_path="bounces@xsell.local",
                         recipient="asha@example.in", envelope_id="", returned=b"Subject: x\\r\\n\\r\\n")
print(message_from_bytes(report)["Message-ID"])
"""


def test_the_smtp_sinks_reports_have_new_message_ids_in_every_run() -> None:
    """The mailbox records a report once per Message-ID; the sink numbered its reports from 1 in every process, so
    after a second `make run` each report had one of the first run's ids, channels refused it as a request_id already
    used, and no e-mail of that run became DELIVERED. Two processes stand for two runs."""
    ids = [
        subprocess.run(
            [sys.executable, "-c", _FIRST_REPORT_ID], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert all(ids) and ids[0] != ids[1]
