"""The trace printer shows the tree, the services and the gaps between days-apart steps."""

from devstack.trace import render

SECOND = 1_000_000_000


def _span(span_id: str, parent: str | None, service: str, name: str, start: int, end: int) -> dict[str, object]:
    return {
        "span_id": span_id,
        "parent_span_id": parent,
        "service": service,
        "name": name,
        "start_ns": start,
        "end_ns": end,
        "status": "UNSET",
    }


def test_tree_with_indentation_and_gap() -> None:
    spans = [
        _span("r", None, "campaigns", "outreach.create", 0, SECOND // 10),
        _span("a", "r", "channels", "channels.dispatch", SECOND // 5, SECOND // 2),
        _span(
            "b",
            "r",
            "attribution",
            "attribution.RecordDisbursement",
            9 * 24 * 3600 * SECOND,
            9 * 24 * 3600 * SECOND + 1,
        ),
    ]
    lines = render(spans)
    assert "[campaigns] outreach.create" in lines[0]
    assert "  [channels] channels.dispatch" in lines[1]
    assert "  [attribution] attribution.RecordDisbursement" in lines[2] and "gap" in lines[2]
    assert "min" in lines[2]


def test_orphans_become_roots() -> None:
    lines = render([_span("x", "missing-parent", "gateway", "gateway click", 0, 1)])
    assert lines == [lines[0]] and "[gateway] gateway click" in lines[0]


def test_what_started_the_outreach_follows_as_its_own_tree() -> None:
    cause = {**_span("e", None, "segments", "IngestEvents", 0, SECOND), "cause": True}
    entry = {**_span("m", "e", "segments", "refresh memberships", SECOND // 10, SECOND // 5), "cause": True}
    lines = render([_span("r", None, "campaigns", "outreach.create", 2 * SECOND, 2 * SECOND), entry, cause])
    assert "[campaigns] outreach.create" in lines[0]
    assert lines[1] == "what started it (linked from the outreach's root):"
    assert "[segments] IngestEvents" in lines[2] and "  [segments] refresh memberships" in lines[3]
