"""`python -m devstack.trace CSELL-NOV-T06-0884`: a campaign ID's trace from the local span store, as a tree."""

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from plumbing.telemetry import CAMPAIGN_ID, HOLD_REASON, HOLD_UNTIL, outreach_trace_id, spans_for_campaign_id


def _ms(nanoseconds: int) -> str:
    milliseconds = nanoseconds / 1e6
    if milliseconds >= 60_000:
        return f"{milliseconds / 60_000:.1f}min"
    if milliseconds >= 1000:
        return f"{milliseconds / 1000:.2f}s"
    return f"{milliseconds:.1f}ms"


def _run(span: dict[str, Any]) -> str:
    """The campaign run a span worked for (a release and its pages): what started a released outreach."""
    run_id = span.get("attributes", {}).get("campaign.run_id")
    return f"  run {run_id}" if run_id else ""


def _event(event: dict[str, Any]) -> str:
    """A span event in words: an outreach held (why, until when) or released."""
    attributes = event.get("attributes") or {}
    if HOLD_REASON in attributes:
        until = attributes.get(HOLD_UNTIL)
        return f"{event['name']}: {attributes[HOLD_REASON]}" + (f" (until {until})" if until else "")
    rest = ", ".join(f"{key}={value}" for key, value in attributes.items() if key != CAMPAIGN_ID)
    return f"{event['name']}: {rest}" if rest else event["name"]


def render(spans: list[dict[str, Any]]) -> list[str]:
    """One line per span: offset from the trace start, duration, service, name, the run it worked for; its events
    (an outreach held, released) on lines of their own; children indented. Spans marked "cause" (what the outreach's
    root links to in other traces) follow, as their own tree."""
    causes = [span for span in spans if span.get("cause")]
    lines = _tree([span for span in spans if not span.get("cause")])
    if causes and lines:
        lines.append("what started it (linked from the outreach's root):")
        lines.extend(f"  {line}" for line in _tree(causes))
    return lines


def _tree(spans: list[dict[str, Any]]) -> list[str]:
    if not spans:
        return []
    by_id = {span["span_id"]: span for span in spans}
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        parent = span["parent_span_id"] if span["parent_span_id"] in by_id else None
        children[parent].append(span)
    start = min(span["start_ns"] for span in spans)
    lines: list[str] = []

    def walk(span: dict[str, Any], depth: int, previous_end: int | None) -> int:
        gap = ""
        if previous_end is not None and span["start_ns"] - previous_end > 1_000_000_000:
            gap = f"  (gap {_ms(span['start_ns'] - previous_end)})"
        status = ""
        if span["status"] == "ERROR":
            reason = span.get("status_description") or ""
            status = f"  ERROR: {reason}" if reason else "  ERROR"
        lines.append(
            f"+{_ms(span['start_ns'] - start):>9} {_ms(span['end_ns'] - span['start_ns']):>9}  "
            f"{'  ' * depth}[{span['service']}] {span['name']}{_run(span)}{status}{gap}"
        )
        lines.extend(f"{'':21}{'  ' * depth}  · {_event(event)}" for event in span.get("events", ()))
        end = span["end_ns"]
        last_child_end: int | None = None
        for child in sorted(children[span["span_id"]], key=lambda item: item["start_ns"]):
            last_child_end = walk(child, depth + 1, last_child_end)
        return max(end, last_child_end or end)

    previous: int | None = None
    for root in sorted(children[None], key=lambda item: item["start_ns"]):
        previous = walk(root, 0, previous)
    return lines


def no_spans_message(campaign_id: str, var_dir: Path) -> str:
    """Why nothing was found, and where an outreach's campaign ID (CSELL-...) comes from."""
    where = (
        f"the e-mails in {var_dir}/mail/ are named after their campaign IDs, and {var_dir}/providers/*.jsonl carry "
        "them for the other channels"
    )
    if campaign_id.startswith("cmp_"):
        return (
            f"{campaign_id} is a campaign key (a campaign's definition); a trace is one outreach's, named by its "
            f"campaign ID, e.g. CSELL-NOV-T00-0001: {where}"
        )
    return f"no spans for {campaign_id} in {var_dir}/traces/ (a campaign ID looks like CSELL-NOV-T00-0001; {where})"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.trace", description=__doc__)
    parser.add_argument("campaign_id", help="e.g. CSELL-NOV-T06-0884")
    parser.add_argument("--var-dir", type=Path, default=Path("var"))
    parser.add_argument(
        "--trace-id",
        action="store_true",
        help="only print the trace id (derived from the campaign ID) to look the trace up in a tracing backend",
    )
    args = parser.parse_args()
    if args.trace_id:
        print(outreach_trace_id(args.campaign_id))
        return 0
    spans = spans_for_campaign_id(args.var_dir, args.campaign_id)
    if not spans:
        print(no_spans_message(args.campaign_id, args.var_dir), file=sys.stderr)
        return 1
    services = sorted({span["service"] for span in spans})
    print(f"trace {outreach_trace_id(args.campaign_id)}  {len(spans)} spans  services: {', '.join(services)}")
    print("\n".join(render(spans)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
