"""Prebuilt Core statements run straight on the sqlite3 driver's connection, for InlineSession.

A statement a module builds once and runs many times (a trigger batch's look-ups and counters: `_ON_SEGMENTS`,
`_ADD_TO_RUN`, ...) is compiled for SQLite once, here (every InlineSession's engine is pysqlite's, so one plan serves
them all), and then each run of it is its SQL, its parameters put in order
through the types' own bind processors, the driver's call, and its rows through the types' own result processors:
what SQLAlchemy's Connection.execute does, without its per-call execution context, compiled-cache key, events and
cursor-result set-up, which cost more than the statement itself in SQLite (a prebuilt `UNION` of two IN look-ups:
~41 µs of CPU through the Connection, ~12 µs here).

Only statements whose SQL does not depend on which parameters are given: SELECTs (with IN lists of any length, their
"expanding" parameters rendered per call as SQLAlchemy renders them), and UPDATEs / DELETEs whose values are part of
the statement. Anything else (INSERTs shaped by their parameters, ORM statements, execution options, executemany)
returns None from `plan_for`, and the caller runs it as before.
"""

import sqlite3
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Dialect, IteratorResult
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler

_NO_ROWS = SimpleResultMetaData([])


class DriverResult(IteratorResult[Any]):
    """The rows of a planned statement, as a Result; `rowcount` as the cursor's (what UPDATEs are checked by)."""

    rowcount: int
    returns_rows: bool


class DriverPlan:
    """One statement compiled for SQLite once: its SQL (or how to render it per call), parameter order and
    processors, and its result columns' keys and processors."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.compiled = compiled
        # IN lists ("expanding" parameters) render one placeholder per value: their SQL is rendered once per lengths.
        # Values rendered into the SQL itself (literal_execute) make it differ per call: rendered every call.
        self.expanding = tuple(compiled.bind_names[bind] for bind in compiled.post_compile_params)
        self.literal = bool(compiled.literal_execute_params)
        self.shapes: dict[tuple[int, ...], tuple[str, list[tuple[str, int, Callable[[Any], Any] | None]]]] = {}
        self.sql = compiled.string
        self.slots = _slots(compiled.positiontup or (), {}, _single(compiled._bind_processors))
        self.metadata = _NO_ROWS
        self.result_processors: list[Callable[[Any], Any] | None] = []
        if compiled._result_columns:
            columns = compiled._result_columns
            self.metadata = SimpleResultMetaData([column.keyname for column in columns])
            self.result_processors = [column.type._cached_result_processor(dialect, None) for column in columns]
        self.returns_rows = bool(compiled._result_columns)
        self.processes_rows = any(self.result_processors)

    def run(self, connection: sqlite3.Connection, params: Mapping[str, Any] | None) -> DriverResult:
        compiled = self.compiled
        if self.literal:
            state = compiled.construct_expanded_state(params)
            sql = state.statement
            slots = _slots(state.positiontup or (), {}, _single(state.processors))
            values = state.parameters
        else:
            values = compiled.construct_params(params, _no_postcompile=True)
            sql, slots = self.sql, self.slots
            if self.expanding:
                lengths = tuple(len(values[name]) for name in self.expanding)
                shape = self.shapes.get(lengths)
                if shape is None:
                    state = compiled.construct_expanded_state(params)
                    expanded = {
                        name: (source, index)
                        for source, names in state.parameter_expansion.items()
                        for index, name in enumerate(names)
                    }
                    shape = self.shapes[lengths] = (
                        state.statement,
                        _slots(state.positiontup or (), expanded, _single(state.processors)),
                    )
                sql, slots = shape
        arguments = tuple(
            (values[name] if index < 0 else values[name][index])
            if process is None
            else process(values[name] if index < 0 else values[name][index])
            for name, index, process in slots
        )
        try:
            cursor = connection.execute(sql, arguments)
            rows: Sequence[Any] = cursor.fetchall() if self.returns_rows else ()
        except sqlite3.Error as error:
            # As SQLAlchemy raises it, so transient_failure still tells a lock timeout from a lasting failure.
            raise DBAPIError.instance(sql, arguments, error, sqlite3.Error) from error
        if self.processes_rows:
            processors_in_order = self.result_processors
            rows = [
                tuple(
                    value if process is None else process(value)
                    for process, value in zip(processors_in_order, row, strict=True)
                )
                for row in rows
            ]
        result = DriverResult(self.metadata, iter(rows))
        result.rowcount = cursor.rowcount
        result.returns_rows = self.returns_rows
        return result


class Unplannable(Exception):
    """A statement the plans do not run (its parameters need what only SQLAlchemy's execution does)."""


def _single(processors: Mapping[str, Any]) -> Mapping[str, Callable[[Any], Any]]:
    """The processors, each one callable: a tuple-valued parameter's (a sequence of them) is left to SQLAlchemy."""
    if any(not callable(process) for process in processors.values()):
        raise Unplannable("a tuple-valued parameter")
    return processors


def _slots(
    names: Sequence[str], expanded: Mapping[str, tuple[str, int]], processors: Mapping[str, Callable[[Any], Any]]
) -> list[tuple[str, int, Callable[[Any], Any] | None]]:
    """Each positional parameter as (the parameter it comes from, its index in that list or -1, its processor)."""
    slots = []
    for name in names:
        source, index = expanded.get(name, (name, -1))
        slots.append((source, index, processors.get(name)))
    return slots


_SEEN = "seen once"
_NEVER = "not plannable"

# Each statement's plan, or _SEEN / _NEVER; by weak reference, so a statement built for one call is forgotten with it.
_plans: "weakref.WeakKeyDictionary[Any, DriverPlan | str]" = weakref.WeakKeyDictionary()


def plan_for(statement: Any, params: Any, dialect: Dialect) -> DriverPlan | None:
    """The statement's plan from its second run on (a statement built for one call is not worth compiling here), or
    None when it is not one a plan can run (see the module's docstring)."""
    if params is not None and not isinstance(params, Mapping):
        return None  # executemany
    try:
        plan = _plans.get(statement)
    except TypeError:
        return None  # not weakly referenceable: not a prebuilt Core statement
    if isinstance(plan, DriverPlan):
        return plan
    if plan is None:
        _plans[statement] = _SEEN
        return None
    if plan is _SEEN and _plannable(statement):
        try:
            made = _plans[statement] = DriverPlan(statement, dialect)
        except Unplannable:
            pass
        else:
            return made
    _plans[statement] = _NEVER
    return None


def _plannable(statement: Any) -> bool:
    if getattr(statement, "_execution_options", None):
        return False
    if getattr(statement, "is_select", False):
        return True
    if getattr(statement, "is_update", False):
        return bool(getattr(statement, "_values", None)) and not getattr(statement, "_multi_values", None)
    return bool(getattr(statement, "is_delete", False))
