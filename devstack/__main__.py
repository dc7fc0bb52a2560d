"""`make run`: the whole stack on this machine, on SQLite, until Ctrl-C."""

import argparse
import errno
import fcntl
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from devstack.provider_sinks import NOT_ON_WHATSAPP, ProviderSinks, SinksThread
from devstack.smtp_sink import start_sink
from devstack.span_store import TRACES_MB_VARIABLE, cap_span_store, traces_limit
from devstack.stack import (
    PORT_OFFSET_VARIABLE,
    Ports,
    PortsUnavailable,
    Stack,
    dev_api_key,
    ports_taken_message,
    taken_ports,
)

PROVIDER_PORTS = ("sms", "whatsapp", "push", "webhook")
LOCK_FILE = "make-run.lock"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("--var-dir", type=Path, default=Path("var"), help="where data, logs and traces live")
    parser.add_argument("--no-smtp-sink", action="store_true", help="use a real SMTP server on the smtp port")
    parser.add_argument(
        "--no-provider-sinks",
        action="store_true",
        help="do not start the local SMS / WhatsApp / push / webhook servers",
    )
    args = parser.parse_args()
    var_dir: Path = args.var_dir
    not_ours = ({"smtp"} if args.no_smtp_sink else set()) | (set(PROVIDER_PORTS) if args.no_provider_sinks else set())
    try:
        ports, traces_cap, lock = preflight(var_dir, not_ours, os.environ)
    except CannotStart as error:
        print(f"the stack did not start: {error}", file=sys.stderr)
        return error.exit_code
    # A var/ of a long run may be over the cap already: checked before anything writes, then once a second.
    cap_span_store(var_dir / "traces", traces_cap)
    sink = None
    providers = None
    extra_env = {}
    try:
        if not args.no_smtp_sink:
            # The sink offers DSN and reports each delivery to the gateway's return-path mailbox, as Postfix does when
            # asked: channels asks for a report of every e-mail, which settles one a crash left AMBIGUOUS.
            sink, _ = start_sink(var_dir / "mail", ports.smtp, reports_to=("127.0.0.1", ports.bounces))
            extra_env["XSELL_CHANNELS_SMTP_DELIVERY_REPORTS"] = "true"
        if not args.no_provider_sinks:
            sinks = ProviderSinks(
                log_dir=var_dir / "providers",
                whatsapp_webhook_url=f"http://127.0.0.1:{ports.gateway_http}/webhooks/whatsapp",
                not_on_whatsapp=NOT_ON_WHATSAPP,
            )
            providers = SinksThread(sinks, {name: getattr(ports, name) for name in PROVIDER_PORTS}).start()
        stack = Stack(
            var_dir=var_dir, ports=ports, api_key=dev_api_key(var_dir), extra_env=extra_env, held_lock=lock.fileno()
        )
        print("starting NATS (JetStream), segments, campaigns, channels, attribution and gateway...", flush=True)
        stack.start()
    except BaseException as error:
        if sink:
            sink.stop()
        if providers:
            providers.stop()
        message = _start_failure(error, ports, not_ours)
        if message is None:
            raise
        print(f"the stack did not start: {message}", file=sys.stderr)
        lock.close()
        return 1
    print(banner(stack, var_dir, traces_cap), flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    while not stopped.wait(1.0):
        exited = {name: code for name, code in stack.exit_codes().items() if code is not None}
        if exited:
            print(f"stopping: a process exited unexpectedly: {exited}; see {var_dir}/logs/", file=sys.stderr)
            break
        cap_span_store(var_dir / "traces", traces_cap)
    print("stopping...", flush=True)
    stack.stop()
    if sink:
        sink.stop()
    if providers:
        providers.stop()
    lock.close()  # var_dir is free for the next `make run`
    print("stopped.", flush=True)
    return 0


class CannotStart(Exception):
    """What stops `make run` before it starts anything; the message says what to change."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def preflight(var_dir: Path, not_ours: set[str], environment: Mapping[str, str]) -> tuple[Ports, int, TextIO]:
    """The ports (all free but `not_ours`), the span store's cap per service, and the lock on var_dir, held from now
    until the process ends; CannotStart otherwise."""
    try:
        ports = Ports.from_environment(environment)
        traces_cap = traces_limit(environment)
    except (PortsUnavailable, ValueError) as error:
        raise CannotStart(str(error), exit_code=2) from None
    taken = taken_ports(ports.roles(without=not_ours))
    if taken:
        raise CannotStart(ports_taken_message(taken))
    lock = hold(var_dir)
    if lock is None:
        raise CannotStart(
            f"another `make run` uses {var_dir}/ (its process id is in {var_dir}/{LOCK_FILE}), or the services of one "
            "that was killed still run (pgrep -af 'devstack|services\\.|gateway'); two stacks on the same data would "
            "both send every campaign. Stop it, or run the second one from another clone"
        )
    return ports, traces_cap, lock


def hold(var_dir: Path) -> TextIO | None:
    """An exclusive lock on var_dir/make-run.lock (with this process's id in it), held until the process ends; None
    when another process holds it."""
    var_dir.mkdir(parents=True, exist_ok=True)
    lock = (var_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _start_failure(error: BaseException, ports: Ports, not_ours: set[str]) -> str | None:
    """What to tell the user when the start failed with `error`; None when its traceback says more (a bug)."""
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        # Taken between the check in main() and the bind: checking again names the port.
        taken = taken_ports(ports.roles(without=not_ours))
        return ports_taken_message(taken) if taken else f"{error}: is another `make run` starting?"
    if isinstance(error, RuntimeError | TimeoutError):
        return str(error)
    return None


def banner(stack: Stack, var_dir: Path, traces_cap: int) -> str:
    """What `make run` prints once everything is serving: where each part listens and where its output goes."""
    ports = stack.ports
    cli = ""
    if ports.gateway != Ports.defaults().gateway:
        target = stack.gateway_target
        cli = f"\n  xsell CLI      export XSELL_GATEWAY={target}   ({PORT_OFFSET_VARIABLE} moved the ports)"
    kept = f"the newest {traces_cap // (1024 * 1024)} MB per service" if traces_cap else "every span"
    return f"""
xsell is running (data in {var_dir}/, logs in {var_dir}/logs/, traces in {var_dir}/traces/)

  gateway gRPC   {stack.gateway_target}      (API key: {var_dir}/dev-api-key, send it as x-api-key){cli}
  gateway HTTP   {stack.gateway_http}   (tracking links, webhooks, /healthz)
  dashboard      {stack.gateway_http}/dashboard   (asks for a key: {var_dir}/dev-api-key's, or one with reports.read)
  segments       127.0.0.1:{ports.segments}
  campaigns      127.0.0.1:{ports.campaigns}
  channels       127.0.0.1:{ports.channels}
  attribution    127.0.0.1:{ports.attribution}
  NATS           tls://127.0.0.1:{ports.nats}   (JetStream data in {var_dir}/nats/, the CA {var_dir}/nats-tls/ca.pem;
                 a user per service, and {var_dir}/nats-operator.env for the dead-letter tool, {var_dir}/nats-feeds.env
                 for a bulk feed: user, password, URL and CA)
  SMTP sink      127.0.0.1:{ports.smtp}       (e-mails land in {var_dir}/mail/; each delivery reported to the mailbox)
  bounce mailbox 127.0.0.1:{ports.bounces}       (delivery reports, bounces and complaints to bounces@xsell.local)
  provider sinks SMS {ports.sms}, WhatsApp {ports.whatsapp}, push {ports.push}, webhook {ports.webhook} \
(accepted requests land in {var_dir}/providers/<provider>.jsonl;
                 WhatsApp to +91 98000 00000 fails as not on WhatsApp, 131026: a fallback_on_failure goes by SMS)
  metrics        http://127.0.0.1:<port>/metrics for {", ".join(f"{n} {p}" for n, p in ports.metrics.items())}
  traces         {var_dir}/traces/ keeps {kept} ({TRACES_MB_VARIABLE}); make trace ID=CSELL-... prints one

Ctrl-C stops everything."""


if __name__ == "__main__":
    sys.exit(main())
