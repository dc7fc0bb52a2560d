"""`xsell …`: load profiles and events, apply segment and campaign files, move them through approval, read status,
reports and one outreach's record, show traces.

Talks to the gateway over gRPC: XSELL_GATEWAY (host:port) and XSELL_API_KEY, or --gateway / --api-key (before
or after the command).
Exit codes: 0 done; 1 the gateway refused (its status code and message are printed), or refused some records of
a load; 2 bad input found before calling (a file, a name); 3 the deployment does not offer the call yet.
"""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

from cli.apply import apply
from cli.client import DEFAULT_GATEWAY, CliError, Gateway, Refused, api_key_from, print_rpc_error
from cli.commands import (
    Out,
    campaigns_command,
    report_command,
    segments_command,
    status_command,
    trace_command,
)
from cli.loading import MAX_BATCH_RECORDS, load_file
from cli.output import print_json, table
from cli.outreach_commands import explain_command, lookup_command, outreaches_command
from cli.record_files import FORMATS, RecordFileError


def _path_env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _add_governed_actions(
    actions: "argparse._SubParsersAction[argparse.ArgumentParser]",
    common: argparse.ArgumentParser,
    noun: str,
    noun_help: str,
    verbs: tuple[tuple[str, str], ...],
    *,
    request_id_default: str,
) -> None:
    """get / submit / approve / reject / …: the maker-checker verbs segments and campaigns share."""
    for action, text in verbs:
        sub = actions.add_parser(action, parents=[common], help=text)
        sub.add_argument(noun, help=noun_help)
        if action != "get":
            sub.add_argument("--request-id", help=f"idempotency key; default: {request_id_default}")
        if action in ("submit", "approve", "reject"):
            sub.add_argument("--version", type=int, help="the version; default the current one")
        if action == "approve":
            sub.add_argument("--note", help="a comment for the audit log")
        if action == "reject":
            sub.add_argument("--reason", required=True, help="what the author should change")


def _batch_size(text: str) -> int:
    size = int(text)
    if not 1 <= size <= MAX_BATCH_RECORDS:
        raise argparse.ArgumentTypeError(f"a batch holds 1 to {MAX_BATCH_RECORDS} records, got {size}")
    return size


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every gateway command takes, before the command (with the defaults) or after it (without, so
    they do not overwrite what was given before: argparse copies a subcommand's defaults over the parent's values)."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--gateway",
        default=default(os.environ.get("XSELL_GATEWAY", DEFAULT_GATEWAY)),
        help=f"the gateway's gRPC host:port (XSELL_GATEWAY; default {DEFAULT_GATEWAY})",
    )
    parser.add_argument(
        "--api-key",
        default=default(None),
        help="an xsk_… key (XSELL_API_KEY; default: var/dev-api-key, the key `make run` made)",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=default(_path_env("XSELL_TLS_CA")),
        help="CA bundle (PEM) to check the gateway's TLS certificate; plaintext when unset (XSELL_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=default(_path_env("XSELL_TLS_CERT")),
        help="client certificate (PEM) where the gateway requires mTLS (XSELL_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=default(_path_env("XSELL_TLS_KEY")),
        help="its private key (PEM) (XSELL_TLS_KEY)",
    )
    parser.add_argument("--timeout", type=float, default=default(30.0), help="seconds each call may take (default 30)")
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of tables")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, defaults=False)

    root = argparse.ArgumentParser(prog="xsell", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    _connection_options(root, defaults=True)
    commands = root.add_subparsers(dest="command", required=True)

    for kind, what, rpc in (
        ("profiles", "profiles (attributes by name)", "UpsertProfiles"),
        ("events", "events", "IngestEvents"),
    ):
        group = commands.add_parser(kind, help=f"load {what} from JSON Lines or CSV files ({rpc})")
        load = group.add_subparsers(dest="action", required=True).add_parser(
            "load",
            parents=[common],
            help="send every record in batches; refused lines are printed with their line numbers, the rest stored",
            description=f"Sends the files' {kind} with {rpc}, in batches. Format: cli/record_files.py, docs/gateway.md;"
            " examples/data/ has a demo set.",
        )
        load.add_argument("files", nargs="+", type=Path, help="*.jsonl (one JSON object a line) or *.csv (a header)")
        load.add_argument("--format", choices=FORMATS, help="when the file name does not say (.jsonl, .json, .csv)")
        load.add_argument(
            "--batch-size",
            type=_batch_size,
            default=1000,
            help=f"records per call (default 1000, at most {MAX_BATCH_RECORDS})",
        )

    apply_parser = commands.add_parser(
        "apply", parents=[common], help="create or update segments and campaigns from YAML/JSON files"
    )
    apply_parser.add_argument(
        "paths", nargs="+", type=Path, help="files, or folders searched for *.yaml / *.yml / *.json"
    )
    apply_parser.add_argument(
        "--dry-run", action="store_true", help="say what would be created, updated or left as is; change nothing"
    )

    segments = commands.add_parser("segments", help="list, get, submit, approve, reject, publish segments")
    segment_actions = segments.add_subparsers(dest="action", required=True)
    segment_actions.add_parser("list", parents=[common], help="every segment")
    _add_governed_actions(
        segment_actions,
        common,
        "segment",
        "a segment id (seg_…) or its display name",
        (
            ("get", "one segment with its rule"),
            ("submit", "submit a draft for approval"),
            ("approve", "approve a submitted version (a key other than the author's)"),
            ("reject", "send a submitted version back to draft, with a reason"),
            ("publish", "publish an approved version: computes its members, which can take minutes"),
        ),
        request_id_default="derived from the segment and version",
    )
    segment_actions.choices["publish"].add_argument(
        "--publish-timeout", type=float, default=600.0, help="seconds to wait (default 600)"
    )

    campaigns = commands.add_parser(
        "campaigns", help="list, get, submit, approve, reject, launch, pause, resume, cancel"
    )
    campaign_actions = campaigns.add_subparsers(dest="action", required=True)
    campaign_actions.add_parser("list", parents=[common], help="every campaign")
    _add_governed_actions(
        campaign_actions,
        common,
        "campaign",
        "a campaign key (cmp_…) or its display name",
        (
            ("get", "one campaign's definition"),
            ("submit", "submit a draft for approval"),
            ("approve", "approve a submitted version (a key other than the author's)"),
            ("reject", "send a submitted version back to draft, with a reason"),
            ("launch", "launch an approved campaign"),
            ("pause", "pause a scheduled or running campaign"),
            ("resume", "resume a paused campaign"),
            ("cancel", "cancel a campaign for good"),
        ),
        request_id_default="derived (or fresh for pause/resume)",
    )
    for action in ("pause", "cancel"):
        campaign_actions.choices[action].add_argument("--reason", help="why, for the audit log")

    status = commands.add_parser("status", parents=[common], help="a campaign's state and its latest runs")
    status.add_argument("campaign", help="a campaign key (cmp_…) or its display name")
    status.add_argument("--runs", type=int, default=5, help="how many recent runs to show (default 5)")

    report = commands.add_parser("report", parents=[common], help="a campaign's counts over all its runs")
    report.add_argument("campaign", help="a campaign key (cmp_…) or its display name")

    trace = commands.add_parser("trace", help="a campaign ID's trace from the local span store (var/traces)")
    trace.add_argument("campaign_id", help="an outreach's campaign ID, e.g. CSELL-NOV-T06-0884")
    trace.add_argument("--var-dir", default="var", help="the stack's var folder (default var)")
    trace.add_argument("--trace-id", action="store_true", help="print only the trace id, for a tracing backend")
    trace.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the spans as JSON")

    lookup = commands.add_parser(
        "lookup", parents=[common], help="one outreach's record by campaign ID: outreach, message timeline, attribution"
    )
    lookup.add_argument("campaign_id", help="an outreach's campaign ID, e.g. CSELL-NOV-T06-0884")

    explain = commands.add_parser(
        "explain", parents=[common], help="why one person was or was not reached by a campaign, run by run"
    )
    explain.add_argument("campaign", help="a campaign key (cmp_…) or its display name")
    explain.add_argument("profile_id", help="the person's profile id, as in the CRM")
    explain.add_argument("--runs", type=int, default=20, help="how many recent runs (default 20)")

    outreaches = commands.add_parser(
        "outreaches", parents=[common], help="a campaign's outreaches: campaign IDs, people, channels, message states"
    )
    outreaches.add_argument("campaign", help="a campaign key (cmp_…) or its display name")
    outreaches.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    return root


def run(args: argparse.Namespace, out: Out) -> int:
    if args.command == "trace":
        return trace_command(args, out)
    gateway = Gateway.connect(
        args.gateway,
        api_key_from(args.api_key),
        args.timeout,
        tls_ca=args.tls_ca,
        tls_certificate=args.tls_cert,
        tls_key=args.tls_key,
    )
    try:
        if args.command == "apply":
            results = apply(gateway, args.paths, err=out.err, dry_run=args.dry_run)
            if out.json:
                print_json([vars(result) for result in results], out.out)
            else:
                table(
                    ("FILE", "KIND", "ID", "VERSION", "RESULT"),
                    [(r.path, r.kind, r.id, r.version, r.action) for r in results],
                    out.out,
                )
            return 0
        # Each command's handler; one that answers no exit code succeeded.
        code = COMMANDS[args.command](gateway, args, out)
        return code or 0
    finally:
        gateway.close()


def load_command(gateway: Gateway, args: argparse.Namespace, out: Out) -> int:
    """Every file in turn; exit 1 when any record was refused (each printed with its line), the rest are stored."""
    results = [
        load_file(gateway, args.command, path, fmt=args.format, batch_size=args.batch_size, err=out.err)
        for path in args.files
    ]
    if out.json:
        print_json([result.as_dict() for result in results], out.out)
    else:
        table(
            ("FILE", "RECORDS", "STORED", "REFUSED"),
            [(r.path, r.records, r.stored, len(r.refused)) for r in results],
            out.out,
        )
    return 1 if any(result.refused for result in results) else 0


COMMANDS: dict[str, Callable[[Gateway, argparse.Namespace, Out], int | None]] = {
    "profiles": load_command,
    "events": load_command,
    "segments": segments_command,
    "campaigns": campaigns_command,
    "status": status_command,
    "report": report_command,
    "lookup": lookup_command,
    "explain": explain_command,
    "outreaches": outreaches_command,
}
"""The commands that talk to the gateway, beside `apply` and `trace`."""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Out(json=bool(getattr(args, "json", False)))
    try:
        code = run(args, out)
        out.out.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`xsell status … | head -3`): stop quietly, as `cat` does, and keep Python's exit
        # flush from failing on the closed pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CliError, RecordFileError) as error:
        print(f"error: {error}", file=out.err)
        return 2
    except Refused as refused:
        print_rpc_error(refused.error, out.err)
        for hint in refused.hints:
            print(hint, file=out.err)
        return 1
    except grpc.RpcError as error:
        print_rpc_error(error, out.err)
        return 1
    except KeyboardInterrupt:
        # A call already sent may still complete on the service: its request_id makes running it again safe.
        print("interrupted; run the same command again to finish (request ids make it safe)", file=out.err)
        return 130


if __name__ == "__main__":
    sys.exit(main())
