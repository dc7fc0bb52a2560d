"""Figure 2: full recompute of each recipe segment with the service's compiler, next to a hand-written SQL floor.

A recompute is what PublishSegment does: INSERT INTO memberships SELECT <rule> for everyone. Both
sides run that statement on the same copy of the cached dataset in a transaction that is rolled
back, so the data never changes; the best of REPEATS runs counts (the first warms the cache), and
the rows inserted check that the compiled rule and the floor select the same number of people.
"""

import time
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    bindparam,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from bench import recipe
from bench.results import Context, write_result
from plumbing.db import Database
from plumbing.outbox import utcnow
from services.segments import store
from services.segments.compiler import compile_rule
from services.segments.rules import parse_rule

GOAL_SECONDS = 1.0
GOAL_RATIO = 1.5
REPEATS = 2
EXAMPLES = Path("examples/segments")
BENCH_SEGMENT = "bench_recompute"


def _placeholder(column: Any, now: datetime, rule: bytes) -> Any:
    """A value for a required column of the segments row, whatever columns the table has grown."""
    kind = column.type
    if isinstance(kind, DateTime):
        return now
    if isinstance(kind, LargeBinary):
        return rule
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, Integer | Numeric):
        return 1
    if isinstance(kind, String | Text):
        return {"state": "PUBLISHED"}.get(column.name, "bench")
    return None


async def _add_segment_row(connection: AsyncConnection, now: datetime, rule: bytes) -> None:
    """The segment row the memberships' foreign key points at (rolled back with the rest)."""
    values = {
        column.name: _placeholder(column, now, rule)
        for column in store.segments.columns
        if not column.nullable and column.server_default is None and column.autoincrement is not True
    }
    values["segment_id"] = BENCH_SEGMENT
    await connection.execute(insert(store.segments).values(**values))


def _materialise(query: Any, now: datetime) -> Any:
    """INSERT INTO memberships SELECT …, as store.insert_members_from does at publish."""
    matching = query.subquery("matching")
    source = select(
        literal(BENCH_SEGMENT, String(64)),
        matching.c.profile_id,
        literal(1, BigInteger),
        literal(now, DateTime(timezone=True)),
    ).select_from(matching)
    return insert(store.memberships).from_select(["segment_id", "profile_id", "segment_version", "entered_at"], source)


async def _timed(
    database: Database, statement: Any, params: dict[str, Any], now: datetime, rule: bytes
) -> tuple[float, int]:
    """Seconds of the INSERT … SELECT and the rows it inserted (the audience size), rolled back."""
    async with database.engine.connect() as connection:
        transaction = await connection.begin()
        try:
            await _add_segment_row(connection, now, rule)
            started = time.perf_counter()
            result = await connection.execute(statement, params)
            elapsed = time.perf_counter() - started
            inserted = int(result.rowcount)
        finally:
            await transaction.rollback()
    return elapsed, inserted


def _floor_query(sql: str, params: dict[str, datetime]) -> Any:
    binds = [bindparam(name, type_=DateTime(timezone=True)) for name in params]
    return text(sql).bindparams(*binds).columns(profile_id=String)


async def measure_backend(backend: str, url: str, segments: list[recipe.RecipeSegment]) -> list[dict[str, Any]]:
    database = Database(url)
    rows: list[dict[str, Any]] = []
    try:
        if not database.is_sqlite:
            async with database.engine.connect() as connection:
                await connection.execute(text("ANALYZE"))
                await connection.commit()
        for segment in segments:
            now = utcnow()
            rule_bytes = segment.rule.SerializeToString(deterministic=True)
            compiled = compile_rule(parse_rule(segment.rule), now)
            row: dict[str, Any] = {
                "segment": segment.key,
                "display_name": segment.display_name,
                "rule_source": segment.source,
            }
            compiled_runs = [
                await _timed(database, _materialise(compiled, now), {}, now, rule_bytes) for _ in range(REPEATS)
            ]
            compiled_count = compiled_runs[0][1]
            row["members"] = compiled_count
            row["recompute_s"] = round(min(seconds for seconds, _ in compiled_runs), 4)
            if segment.floor_sql is not None:
                params = segment.floor_parameters(now)
                floor = _floor_query(segment.floor_sql, params)
                statement = _materialise(floor, now)
                floor_runs = [await _timed(database, statement, params, now, rule_bytes) for _ in range(REPEATS)]
                floor_count = floor_runs[0][1]
                row["floor_s"] = round(min(seconds for seconds, _ in floor_runs), 4)
                row["floor_members"] = floor_count
                row["same_audience"] = floor_count == compiled_count
                row["ratio"] = round(row["recompute_s"] / max(row["floor_s"], 1e-6), 2)
            else:
                row.update(floor_s=None, floor_members=None, same_audience=None, ratio=None)
            row["meets_time_goal"] = row["recompute_s"] <= GOAL_SECONDS
            row["meets_ratio_goal"] = row["ratio"] is not None and row["ratio"] <= GOAL_RATIO
            rows.append(row)
            floor_text = f"{row['floor_s']:.3f}s floor, x{row['ratio']}" if row["floor_s"] is not None else "no floor"
            print(
                f"  {backend:10s} {segment.key:28s} {row['members']:>9d} members  {row['recompute_s']:.3f}s  "
                f"({floor_text}){'' if row['same_audience'] in (True, None) else '  AUDIENCE DIFFERS'}",
                flush=True,
            )
    finally:
        await database.dispose()
    return rows


async def run(context: Context) -> None:
    segments, source = recipe.load(EXAMPLES)
    print(f"recompute: {len(segments)} segments from {source}", flush=True)
    by_backend: dict[str, Any] = {}
    for backend in context.datasets:
        rows = await measure_backend(backend, await context.working_copy(backend), segments)
        times = [row["recompute_s"] for row in rows]
        ratios = [row["ratio"] for row in rows if row["ratio"] is not None]
        by_backend[backend] = {
            "segments": rows,
            "max_recompute_s": max(times),
            "median_recompute_s": round(median(times), 4),
            "max_ratio": max(ratios) if ratios else None,
            "median_ratio": round(median(ratios), 2) if ratios else None,
            "segments_over_time_goal": [row["segment"] for row in rows if not row["meets_time_goal"]],
            "segments_over_ratio_goal": [row["segment"] for row in rows if not row["meets_ratio_goal"]],
            "audiences_differ": [row["segment"] for row in rows if row["same_audience"] is False],
        }
        by_backend[backend]["goal_met"] = not (
            by_backend[backend]["segments_over_time_goal"] or by_backend[backend]["segments_over_ratio_goal"]
        )
    met = all(
        not result["segments_over_time_goal"] and not result["segments_over_ratio_goal"]
        for result in by_backend.values()
    )
    path = write_result(
        context,
        "recompute",
        {
            "figure": "full recompute per recipe segment (INSERT INTO memberships SELECT <compiled rule>)",
            "unit": "seconds per segment; ratio = compiled / hand-written floor",
            "goal": f"<= {GOAL_SECONDS} s per segment and <= {GOAL_RATIO}x the raw-SQL floor",
            "goal_met": met,
            "method": (
                f"best of {REPEATS} runs (the first warms the cache), each in a rolled-back transaction on a copy of "
                "the cached dataset; members = rows inserted; "
                "the compiled side is services.segments.compiler.compile_rule"
            ),
            "rule_source": source,
            "backends": by_backend,
        },
    )
    for backend, result in by_backend.items():
        print(
            f"recompute {backend}: max {result['max_recompute_s']}s, median {result['median_recompute_s']}s, "
            f"max ratio {result['max_ratio']}, median ratio {result['median_ratio']}; "
            f"over time goal: {result['segments_over_time_goal'] or 'none'}; "
            f"over ratio goal: {result['segments_over_ratio_goal'] or 'none'}",
            flush=True,
        )
    print(f"recompute: goal {'met' if met else 'NOT met'} -> {path}", flush=True)
