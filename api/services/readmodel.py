"""The read model writer: applies an execution's events to its rows, in order, exactly once.

The worker's read model runner (activities/publisher.py) calls `write_batch` with the events of
one workflow activation, on a connection of its own, before the activation's commands leave;
runs begun before that publish through the `wfo.publish_events` local activity, which calls
`apply_batch`. One transaction per batch; events at or below the execution's `last_seq` were
applied already and are skipped, so a retried batch changes nothing.

Written with SQLAlchemy Core, one statement per kind of change (executemany where there are
several): the ORM's unit of work cost more than the database on the hot path of every hop.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from api.db import utcnow
from api.models.executions import (
    BlockerRow,
    ExecutionEventRow,
    ExecutionRow,
    MilestoneRow,
    TaskExecutionRow,
    event_time,
)
from api.models.webhooks import WebhookRow
from api.services.events import NOTIFY_CHANNEL
from api.services.outbox import ExecutionRef, queue_deliveries, subscribed_webhooks
from workflows.inputs import Event, EventBatch

log = logging.getLogger(__name__)

_EXECUTION_END = {
    "workflow.execution.completed",
    "workflow.execution.failed",
    "workflow.execution.cancelled",
}

_executions = ExecutionRow.__table__  # type: ignore[attr-defined]
_tasks = TaskExecutionRow.__table__  # type: ignore[attr-defined]
_events = ExecutionEventRow.__table__  # type: ignore[attr-defined]
_milestones = MilestoneRow.__table__  # type: ignore[attr-defined]
_blockers = BlockerRow.__table__  # type: ignore[attr-defined]

_webhooks = WebhookRow.__table__  # type: ignore[attr-defined]

#: Task row columns a batch may change (besides its key columns, name and type).
_TASK_FIELDS = ("status", "start_time", "end_time", "attempts", "error", "resources", "updated_at", "seq")


class UnknownExecution(Exception):
    """A batch for an execution the database does not have."""


class SequenceGap(Exception):
    """A batch that starts past the next sequence number: an earlier batch is still on its way
    (the last events of a run that continued as new, written as it closed)."""


async def lock_execution(session: AsyncSession, execution_id: int) -> ExecutionRow | None:
    """The execution row, write-locked for this transaction on both databases."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite has no row locks: a first write takes the database's write lock right away, so
        # the reads below see the state this transaction will change (and writers queue up).
        await session.exec(
            sa.update(ExecutionRow)
            .where(col(ExecutionRow.id) == execution_id)
            .values(last_seq=ExecutionRow.last_seq)
        )
    return await session.get(ExecutionRow, execution_id, with_for_update=True, populate_existing=True)


async def apply_batch(session: AsyncSession, batch: EventBatch) -> int:
    """Apply the new events of a batch and commit; returns how many were new."""
    try:
        applied = await session.run_sync(lambda sync_session: write_batch(sync_session.connection(), batch))
    except BaseException:
        await session.rollback()
        raise
    if applied:
        await session.commit()
    else:
        await session.rollback()
    # Rows this session had loaded are stale now (they were changed underneath the ORM).
    session.expire_all()
    return applied


def write_batch(conn: sa.Connection, batch: EventBatch) -> int:
    """Apply the new events of a batch inside the caller's transaction; returns how many were new.
    Raises UnknownExecution when the execution has no row, SequenceGap when the batch does not
    follow on from the last event applied."""
    return write_batches(conn, [batch])[0]


def write_batches(conn: sa.Connection, batches: list[EventBatch]) -> list[int]:
    """Apply several batches (of one or more executions, each execution's in sequence order) in
    the caller's transaction, with one statement per kind of change for all of them (a group
    commit); returns how many events of each batch were new. Raises like write_batch for the
    first batch that cannot be applied (nothing is then written)."""
    current = _locked(conn, sorted({int(b.execution_id) for b in batches}))
    applied: list[int] = []
    changes: dict[int, _Changes] = {}
    for batch in batches:
        execution_id = int(batch.execution_id)
        row = current.get(execution_id)
        if row is None:
            raise UnknownExecution(f"execution {batch.execution_id} is not in the database")
        execution = changes.get(execution_id)
        last_seq = execution.last_seq if execution is not None else row.last_seq
        fresh = [e for e in batch.events if e.seq > last_seq]
        if not fresh:
            applied.append(0)
            continue
        if fresh[0].seq != last_seq + 1:
            raise SequenceGap(
                f"execution {batch.execution_id}: events from {fresh[0].seq} arrived before {last_seq + 1}"
            )
        if execution is None:
            execution = changes[execution_id] = _Changes(
                ExecutionRef(row.id, row.definition_id, row.definition_version), row.last_seq
            )
        for event in fresh:
            execution.apply(event)
        execution.fresh += fresh
        execution.last_seq = fresh[-1].seq
        execution.execution["last_seq"] = fresh[-1].seq
        # The run now writing: a long execution continues as new runs under one workflow id.
        if batch.run_id:
            execution.execution["run_id"] = batch.run_id
        execution.execution["updated_at"] = utcnow()
        applied.append(len(fresh))
    if changes:
        _write(conn, list(changes.values()), webhooks=any(row.webhooks for row in current.values()))
    return applied


def _locked(conn: sa.Connection, execution_ids: list[int]) -> dict[int, sa.Row[Any]]:
    """The executions' key facts, write-locked for this transaction (in id order, so that two
    writers never wait on each other in a circle), and whether any webhook is active: one
    statement."""
    rows = conn.execute(_statements(conn.dialect.name).locked, {"execution_ids": execution_ids})
    return {row.id: row for row in rows}


class _Statements:
    """The writer's statements for one database, built once: building a statement costs
    SQLAlchemy more than running it does."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        columns = (
            _executions.c.id,
            _executions.c.definition_id,
            _executions.c.definition_version,
            _executions.c.last_seq,
            sa.exists()
            .where(_webhooks.c.active.is_(True), _webhooks.c.deleted_at.is_(None))
            .label("webhooks"),
        )
        ids: Any = sa.bindparam("execution_ids", expanding=True)
        if dialect == "sqlite":
            # SQLite has no row locks: a first write takes the database's write lock right away
            # (see lock_execution), and RETURNING reads in the same statement.
            self.locked: Any = (
                sa.update(_executions)
                .where(_executions.c.id.in_(ids))
                .values(last_seq=_executions.c.last_seq)
                .returning(*columns)
            )
        else:
            # The notification that wakes the API's watchers is queued here and sent at commit
            # (dropped on rollback): no round trip of its own.
            notify = sa.func.pg_notify(NOTIFY_CHANNEL, sa.cast(_executions.c.id, sa.Text)).label("notified")
            self.locked = (
                sa.select(*columns, notify)
                .where(_executions.c.id.in_(ids))
                .order_by(_executions.c.id)
                .with_for_update(of=_executions)
            )
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_tasks)
        self.upsert_tasks = insert.on_conflict_do_update(
            index_elements=[_tasks.c.execution_id, _tasks.c.task_definition_id],
            set_={f: insert.excluded[f] for f in _TASK_FIELDS},
        ).returning(
            _tasks.c.id, _tasks.c.execution_id, _tasks.c.task_definition_id, sort_by_parameter_order=True
        )
        #: The execution row; the columns to set come with the parameters.
        self.update_execution = sa.update(_executions).where(
            _executions.c.id == sa.bindparam("execution_row_id")
        )
        self.insert_events = sa.insert(_events)
        self.insert_events_returning = sa.insert(_events).returning(
            _events.c.id, sort_by_parameter_order=True
        )
        self._merges: dict[int, Any] = {}

    def update_execution_merging(self, keys: int) -> Any:
        """The execution row with `keys` results merged into its context by the database (the
        context, up to a megabyte, is neither read nor rewritten here): parameters `patch`
        (PostgreSQL: the results as a JSON object), or `path<i>` and `value<i>` (SQLite)."""
        statement = self._merges.get(keys)
        if statement is None:
            context = _executions.c.context
            if self.dialect == "postgresql":
                merged = context.op("||")(sa.cast(sa.bindparam("patch", type_=sa.Text), JSONB))
            else:
                # json_set with one '$."<key>"' path per key (task ids hold no quote or backslash),
                # each value JSON text parsed by json(), so that it goes in as JSON, not a string.
                arguments: list[Any] = []
                for i in range(keys):
                    arguments += [
                        sa.bindparam(f"path{i}", type_=sa.Text),
                        sa.func.json(sa.bindparam(f"value{i}", type_=sa.Text)),
                    ]
                merged = sa.func.json_set(context, *arguments)
            statement = self._merges[keys] = self.update_execution.values(context=merged)
        return statement


@functools.cache
def _statements(dialect: str) -> _Statements:
    return _Statements(dialect)


def _write(conn: sa.Connection, executions: list[_Changes], *, webhooks: bool) -> None:
    """Write what the batches change: the task rows, milestones and blockers, the execution rows,
    the events (and their webhook deliveries), then wake the API's watchers."""
    statements = _statements(conn.dialect.name)
    task_rows = [row for execution in executions for row in execution.tasks.values()]
    if task_rows:
        by_id = {execution.ref.id: execution for execution in executions}
        for task_row_id, execution_id, task_id in conn.execute(statements.upsert_tasks, task_rows):
            by_id[execution_id].task_ids[task_id] = task_row_id
    # The execution rows: one statement for all those that change the same columns.
    updates: dict[tuple[int, tuple[str, ...]], tuple[Any, list[dict[str, Any]]]] = {}
    for execution in executions:
        statement, values = execution.write_rest(conn, statements, webhooks=webhooks)
        updates.setdefault((id(statement), tuple(sorted(values))), (statement, []))[1].append(values)
    for statement, rows in updates.values():
        conn.execute(statement, rows)
    event_rows = [
        {
            "execution_id": execution.ref.id,
            "seq": e.seq,
            "type": e.type,
            "created_at": e.at,
            "data": _jsonable(e.data),
        }
        for execution in executions
        for e in execution.fresh
    ]
    subscribed = (
        subscribed_webhooks(conn, [e for execution in executions for e in execution.fresh])
        if webhooks
        else []
    )
    if not subscribed:
        conn.execute(statements.insert_events, event_rows)
    else:
        inserted = iter(conn.execute(statements.insert_events_returning, event_rows).scalars())
        for execution in executions:
            written = [(event, next(inserted)) for event in execution.fresh]
            # Webhook deliveries are written with the events they carry: one transaction, none lost.
            queue_deliveries(
                conn, execution.ref, subscribed, written, execution.task_ids, execution.blocker_ids
            )


@dataclass
class _Changes:
    """What a batch changes, gathered in memory, then written with a few statements."""

    ref: ExecutionRef
    #: The last sequence number applied so far (the row's, then this group's).
    last_seq: int = 0
    #: The new events, in order.
    fresh: list[Event] = field(default_factory=list)
    execution: dict[str, Any] = field(default_factory=dict)
    #: task id -> the values its row gets (inserted, or updated if it exists).
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: task id -> row id, for the tasks the batch wrote and those its blockers name.
    task_ids: dict[str, int] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    milestones_added: list[dict[str, Any]] | None = None
    milestones_achieved: list[tuple[str, datetime | None]] = field(default_factory=list)
    #: key -> values of blockers detected in this batch (resolved_at set if also resolved in it).
    blockers_added: dict[str, dict[str, Any]] = field(default_factory=dict)
    blockers_resolved: list[tuple[str, datetime | None]] = field(default_factory=list)
    blocker_ids: dict[str, int] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        data = event.data
        kind = event.type
        if kind == "workflow.execution.started":
            self.execution.update(status=data["status"], end_time=None, error=None)
            if "workflowId" in data:
                self.execution["workflow_id"] = data["workflowId"]
            if "totalTasks" in data:
                self.execution["total_tasks"] = data["totalTasks"]
            self.milestones_added = [
                {
                    "key": m["key"],
                    "position": position,
                    "name": m["name"],
                    "description": m.get("description"),
                }
                for position, m in enumerate(data.get("milestones", []))
            ]
        elif kind.startswith("task.execution."):
            self._task(event)
        elif kind == "milestone.achieved":
            self.milestones_achieved.append((data["key"], event_time(data["achievedAt"])))
        elif kind == "blocker.detected":
            self.blockers_added[data["key"]] = {
                "key": data["key"],
                "kind": data["kind"],
                "task": data.get("taskId"),
                "description": _jsonable(data["description"]),
                "created_at": event_time(data["createdAt"]),
                "resolved_at": None,
            }
        elif kind == "blocker.resolved":
            resolved_at = event_time(data["resolvedAt"])
            added = self.blockers_added.get(data["key"])
            if added is not None and added["resolved_at"] is None:
                added["resolved_at"] = resolved_at
            else:
                self.blockers_resolved.append((data["key"], resolved_at))
        elif kind == "progress.updated":
            self.execution["completed_tasks"] = data["completedTasks"]
        elif kind in _EXECUTION_END:
            self.execution.update(
                status=data["status"],
                end_time=event_time(data.get("endTime")),
                error=_jsonable(data.get("error")),
            )

    def _task(self, event: Event) -> None:
        """Task events carry the task's whole state (its snapshot): the last one in the batch wins."""
        data = event.data
        task_id = data["taskId"]
        self.tasks[task_id] = {
            "execution_id": self.ref.id,
            "task_definition_id": task_id,
            "name": data.get("name", task_id),
            "type": data.get("type", "noop"),
            "status": data["status"],
            "start_time": event_time(data.get("startTime")),
            "end_time": event_time(data.get("endTime")),
            "attempts": data.get("attempts", 0),
            "error": _jsonable(data.get("error")),
            "resources": _jsonable(data.get("resources")),
            "updated_at": event.at,
            "seq": event.seq,
        }
        if event.type == "task.execution.completed" and "contextKey" in data:
            self.context[data["contextKey"]] = _jsonable(data.get("result"))
            self.execution["context_version"] = data["contextVersion"]
            self.execution["context_updated_at"] = event.at

    def write_rest(
        self, conn: sa.Connection, statements: _Statements, *, webhooks: bool
    ) -> tuple[Any, dict[str, Any]]:
        """Blockers and milestones; returns the statement and values that update the execution
        row, to be run with those of other executions of the same shape (see _write)."""
        ref = self.ref
        named = {b["task"] for b in self.blockers_added.values() if b["task"]}
        if webhooks:
            named |= {e.data["taskId"] for e in self.fresh if e.data.get("taskId")}
        self._look_up_tasks(conn, named - set(self.task_ids))
        if self.milestones_added is not None:
            existing = set(
                conn.execute(
                    sa.select(_milestones.c.key).where(_milestones.c.execution_id == ref.id)
                ).scalars()
            )
            missing = [
                {"execution_id": ref.id, **m} for m in self.milestones_added if m["key"] not in existing
            ]
            if missing:
                conn.execute(sa.insert(_milestones), missing)
        for key, achieved_at in self.milestones_achieved:
            conn.execute(
                sa.update(_milestones)
                .where(_milestones.c.execution_id == ref.id, _milestones.c.key == key)
                .values(achieved_at=achieved_at)
            )
        # Resolutions of blockers detected earlier first: a blocker detected again in this batch
        # is a new row that they must not touch.
        for key, resolved_at in self.blockers_resolved:
            conn.execute(
                sa.update(_blockers)
                .where(
                    _blockers.c.execution_id == ref.id,
                    _blockers.c.key == key,
                    _blockers.c.resolved_at.is_(None),
                )
                .values(resolved_at=resolved_at)
            )
        if self.blockers_added:
            blockers = [
                {
                    "execution_id": ref.id,
                    "task_execution_id": self.task_ids.get(blocker["task"] or ""),
                    **{k: v for k, v in blocker.items() if k != "task"},
                }
                for blocker in self.blockers_added.values()
            ]
            inserted = conn.execute(
                sa.insert(_blockers).returning(_blockers.c.id, _blockers.c.key, sort_by_parameter_order=True),
                blockers,
            )
            self.blocker_ids = {key: blocker_id for blocker_id, key in inserted}
        values = {"execution_row_id": ref.id, **self.execution}
        if not self.context:
            return statements.update_execution, values
        if statements.dialect == "postgresql":
            values["patch"] = json.dumps(self.context)
        else:
            for i, (key, value) in enumerate(self.context.items()):
                values[f"path{i}"], values[f"value{i}"] = f'$."{key}"', json.dumps(value)
        return statements.update_execution_merging(len(self.context)), values

    def _look_up_tasks(self, conn: sa.Connection, task_ids: set[str]) -> None:
        if not task_ids:
            return
        rows = conn.execute(
            sa.select(_tasks.c.id, _tasks.c.task_definition_id).where(
                _tasks.c.execution_id == self.ref.id, _tasks.c.task_definition_id.in_(task_ids)
            )
        )
        for task_row_id, task_id in rows:
            self.task_ids[task_id] = task_row_id


def _jsonable(value: Any) -> Any:
    """Event data with datetimes as ISO text, for the JSON columns; NUL characters, which
    PostgreSQL cannot store (SQLite can), replaced on both alike."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {_jsonable(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
