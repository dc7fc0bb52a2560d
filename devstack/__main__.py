"""`make run`: the whole stack on this machine, on SQLite, until Ctrl-C."""

import argparse
import signal
import sys
import threading
from pathlib import Path

from devstack.provider_sinks import NOT_ON_WHATSAPP, ProviderSinks, SinksThread
from devstack.smtp_sink import start_sink
from devstack.stack import Ports, Stack, dev_api_key


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
    ports = Ports.defaults()
    sink = None
    extra_env = {}
    if not args.no_smtp_sink:
        # The sink offers DSN and reports each delivery to the gateway's return-path mailbox, as Postfix does when
        # asked: channels asks for a report of every e-mail, which settles one a crash left AMBIGUOUS.
        sink, _ = start_sink(var_dir / "mail", ports.smtp, reports_to=("127.0.0.1", ports.bounces))
        extra_env["XSELL_CHANNELS_SMTP_DELIVERY_REPORTS"] = "true"
    providers = None
    if not args.no_provider_sinks:
        provider_ports = {"sms": ports.sms, "whatsapp": ports.whatsapp, "push": ports.push, "webhook": ports.webhook}
        sinks = ProviderSinks(
            log_dir=var_dir / "providers",
            whatsapp_webhook_url=f"http://127.0.0.1:{ports.gateway_http}/webhooks/whatsapp",
            not_on_whatsapp=NOT_ON_WHATSAPP,
        )
        providers = SinksThread(sinks, provider_ports).start()
    stack = Stack(var_dir=var_dir, ports=ports, api_key=dev_api_key(var_dir), extra_env=extra_env)
    print("starting NATS (JetStream), segments, campaigns, channels, attribution and gateway...", flush=True)
    try:
        stack.start()
    except (RuntimeError, TimeoutError) as error:
        print(f"the stack did not start: {error}", file=sys.stderr)
        if sink:
            sink.stop()
        if providers:
            providers.stop()
        return 1
    print(
        f"""
xsell is running (data in {var_dir}/, logs in {var_dir}/logs/, traces in {var_dir}/traces/)

  gateway gRPC   {stack.gateway_target}      (API key: {var_dir}/dev-api-key, send it as x-api-key)
  gateway HTTP   {stack.gateway_http}   (tracking links, /healthz)
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

Ctrl-C stops everything.""",
        flush=True,
    )
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    while not stopped.wait(1.0):
        exited = {name: code for name, code in stack.exit_codes().items() if code is not None}
        if exited:
            print(f"stopping: a process exited unexpectedly: {exited}; see {var_dir}/logs/", file=sys.stderr)
            break
    print("stopping...", flush=True)
    stack.stop()
    if sink:
        sink.stop()
    if providers:
        providers.stop()
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
