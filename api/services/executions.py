"""Executions: start, cancel, retry and approve through Temporal; read from the read model."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.db import utcnow
from api.errors import (
    ExecutionConflict,
    ExecutionNotFound,
    InvalidInput,
    ServiceUnavailable,
    TaskExecutionNotFound,
)
from api.models.definitions import DefinitionVersionRow
from api.models.executions import (
    BlockerRow,
    ExecutionCreate,
    ExecutionRow,
    ExecutionStatus,
    MilestoneRow,
    TaskExecutionRow,
    TaskStatus,
    compact_json,
)
from api.models.users import UserRow
from api.services.definitions import DefinitionService
from api.services.estimates import estimate_completion
from api.services.users import Principal, parse_id
from api.settings import Settings
from workflows.constants import INTERPRETER_WORKFLOW, SEARCH_ATTRIBUTES, workflow_id
from workflows.inputs import (
    PUBLISH_BY_RUNNER,
    EngineOptions,
    InterpreterInput,
    ResumeState,
    RetrySpec,
    SyncPointSpec,
    TaskCarryOver,
    TaskSpec,
    pack_carry,
    pack_tasks,
)
from workflows.records import TaskDecision

log = logging.getLogger(__name__)

#: Temporal refuses payloads over 2 MB; the workflow input must stay clear of that.
MAX_INPUT_BYTES = 1_800_000
#: An input larger than this carries its tasks packed (workflows.inputs.pack_tasks).
PACK_TASKS_ABOVE_BYTES = 256 * 1024
#: What one execution, and one of its task rows, takes in a list answer besides their text (an estimate).
EXECUTION_BYTES = 400
TASK_ROW_BYTES = 300
#: How long an answer waits for the read model to show what the workflow acknowledged.
READ_MODEL_WAIT_SECONDS = 10.0
_UNAVAILABLE = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED}
#: A start that failed with one of these may still have started the run.
_START_IN_DOUBT = _UNAVAILABLE | {RPCStatusCode.UNKNOWN}
_ATTRIBUTE_KEYS = {name: SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES}


@dataclass(frozen=True, slots=True)
class ExecutionDetail:
    """An execution with its task executions, as the API shows it."""

    row: ExecutionRow
    tasks: list[TaskExecutionRow]


@dataclass(frozen=True, slots=True)
class Progress:
    execution: ExecutionRow
    estimated_completion: Any
    blockers: list[BlockerRow]
    milestones: list[MilestoneRow]


def _text_length(column: Any) -> Any:
    """Characters of a column as text (JSON documents included), 0 for NULL: the same on SQLite and PostgreSQL."""
    return func.coalesce(func.length(sa.cast(column, sa.Text)), 0)


def _start_in_doubt(exc: BaseException) -> bool:
    """Whether Temporal may have started the run although the start failed: the request may have
    reached it and only the answer got lost (a timeout, a broken connection, the caller gone)."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    cause = exc.__cause__ if isinstance(exc, ServiceUnavailable) else exc
    return isinstance(cause, RPCError) and cause.status in _START_IN_DOUBT


@contextlib.asynccontextmanager
async def temporal_errors(action: str) -> AsyncIterator[None]:
    """Temporal being unreachable is a 503, whatever the call."""
    try:
        yield
    except RPCError as exc:
        if exc.status in _UNAVAILABLE:
            raise ServiceUnavailable(
                f"Temporal is unavailable; could not {action}.", headers={"Retry-After": "5"}
            ) from exc
        raise
    except RuntimeError as exc:  # a lazy client that cannot connect
        if "connect" not in str(exc).lower():
            raise
        raise ServiceUnavailable(
            f"Temporal is unavailable; could not {action}.", headers={"Retry-After": "5"}
        ) from exc


def request_digest(data: ExecutionCreate) -> str:
    canonical = json.dumps(
        {"definition": data.workflow_definition_id, "context": data.initial_context or {}},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class ExecutionService:
    def __init__(self, session: AsyncSession, settings: Settings, temporal: Client):
        self.session = session
        self.settings = settings
        self.temporal = temporal

    # --- reads ---------------------------------------------------------------------------

    async def list(
        self,
        limit: int,
        offset: int,
        status: ExecutionStatus | None = None,
        definition_id: str | None = None,
        *,
        with_tasks: bool = True,
    ) -> tuple[list[ExecutionDetail], int]:
        """Executions, newest first (with their task executions unless the caller loads them itself).

        With their task executions, the page ends early once it would embed more task rows or
        bytes than the settings allow (always at least one execution, which a read of that one
        execution would show whole anyway): the caller continues at offset + len(items).
        """
        conditions = []
        if status is not None:
            conditions.append(col(ExecutionRow.status) == status.value)
        if definition_id is not None:
            key = parse_id(definition_id)
            conditions.append(col(ExecutionRow.definition_id) == (key if key is not None else -1))
        total = (
            await self.session.exec(select(func.count()).select_from(ExecutionRow).where(*conditions))
        ).one()
        newest = col(ExecutionRow.id).desc()
        if not with_tasks:
            rows = list(
                await self.session.exec(
                    select(ExecutionRow).where(*conditions).order_by(newest).limit(limit).offset(offset)
                )
            )
            return [ExecutionDetail(r, []) for r in rows], total
        # Sizes first, from the executions table alone: the rows and text the page would carry.
        sized = (
            await self.session.exec(
                select(
                    ExecutionRow.id,
                    ExecutionRow.total_tasks,
                    _text_length(ExecutionRow.context) + _text_length(ExecutionRow.error),
                )
                .where(*conditions)
                .order_by(newest)
                .limit(limit)
                .offset(offset)
            )
        ).all()
        kept = await self._within_budget([(i, tasks, size) for i, tasks, size in sized if i is not None])
        rows = list(
            await self.session.exec(
                select(ExecutionRow).where(col(ExecutionRow.id).in_(kept)).order_by(newest)
            )
        )
        tasks = await self.tasks_of([r.id for r in rows])
        return [ExecutionDetail(r, tasks.get(r.id, [])) for r in rows], total

    async def _within_budget(self, sized: Sequence[tuple[int, int, int | None]]) -> Sequence[int]:
        """The leading executions of `sized` (id, task count, text bytes) that fit one page's budget."""
        max_rows, max_bytes = (
            self.settings.execution_list_max_task_rows,
            self.settings.execution_list_max_bytes,
        )
        kept: list[int] = []
        rows = size = 0
        # A task row never outnumbers the definition's tasks (one row per task id), so this cut
        # needs no look at the task table.
        for execution_id, task_count, text in sized:
            rows += task_count
            size += EXECUTION_BYTES + (text or 0) + task_count * TASK_ROW_BYTES
            if kept and (rows > max_rows or size > max_bytes):
                break
            kept.append(execution_id)
        if not kept:
            return kept
        # Then the task rows' own text (errors, resources), read only for the executions kept.
        texts = dict(
            (
                await self.session.exec(
                    select(
                        TaskExecutionRow.execution_id,
                        func.sum(
                            _text_length(TaskExecutionRow.error) + _text_length(TaskExecutionRow.resources)
                        ),
                    )
                    .where(col(TaskExecutionRow.execution_id).in_(kept))
                    .group_by(col(TaskExecutionRow.execution_id))
                )
            ).all()
        )
        size = 0
        for position, (execution_id, task_count, text) in enumerate(sized[: len(kept)]):
            size += (
                EXECUTION_BYTES
                + (text or 0)
                + task_count * TASK_ROW_BYTES
                + int(texts.get(execution_id) or 0)
            )
            if position and size > max_bytes:
                return kept[:position]
        return kept

    async def get(self, execution_id: str) -> ExecutionDetail:
        row = await self._row(execution_id)
        assert row.id is not None
        return ExecutionDetail(row, (await self.tasks_of([row.id])).get(row.id, []))

    async def tasks(
        self, execution_id: str, limit: int, offset: int, status: TaskStatus | None = None
    ) -> tuple[builtins.list[TaskExecutionRow], int]:
        row = await self._row(execution_id)
        conditions = [col(TaskExecutionRow.execution_id) == row.id]
        if status is not None:
            conditions.append(col(TaskExecutionRow.status) == status.value)
        total = (
            await self.session.exec(select(func.count()).select_from(TaskExecutionRow).where(*conditions))
        ).one()
        rows = await self.session.exec(
            select(TaskExecutionRow)
            .where(*conditions)
            .order_by(col(TaskExecutionRow.id))
            .limit(limit)
            .offset(offset)
        )
        return list(rows), total

    async def progress(self, execution_id: str) -> Progress:
        row = await self._row(execution_id)
        blockers = await self.session.exec(
            select(BlockerRow).where(BlockerRow.execution_id == row.id).order_by(col(BlockerRow.id))
        )
        milestones = await self.session.exec(
            select(MilestoneRow)
            .where(MilestoneRow.execution_id == row.id)
            .order_by(col(MilestoneRow.position))
        )
        estimate = await estimate_completion(self.session, row, await self._document(row))
        return Progress(row, estimate, list(blockers), list(milestones))

    # --- writes --------------------------------------------------------------------------

    async def start(
        self, user: Principal, data: ExecutionCreate, idempotency_key: str | None = None
    ) -> ExecutionDetail:
        """Start an execution of a definition's current version (404 for an unknown definition).

        With an Idempotency-Key, a repeated request returns the execution the first one started.
        """
        digest = request_digest(data)
        if idempotency_key is not None:
            existing = await self._by_idempotency_key(user, idempotency_key, digest)
            if existing is not None:
                return await self.get(str(existing.id))
        definition = await DefinitionService(self.session, self.settings).current(data.workflow_definition_id)
        context = data.initial_context or {}
        size = len(compact_json(context).encode())
        if size > self.settings.max_context_bytes:
            raise InvalidInput(
                "The request has 1 problem.",
                [
                    {
                        "pointer": "#/initialContext",
                        "detail": f"{size} bytes exceed the limit of {self.settings.max_context_bytes}",
                    }
                ],
            )
        now = utcnow()
        assert definition.id is not None
        row = ExecutionRow(
            definition_id=definition.id,
            definition_version=definition.version,
            status=ExecutionStatus.RUNNING.value,
            start_time=now,
            workflow_id="",
            created_by=user.id,
            idempotency_key=idempotency_key,
            request_digest=digest if idempotency_key else None,
            context=context,
            context_version=1,
            context_created_at=now,
            context_updated_at=now,
            total_tasks=len(definition.document["tasks"]),
            updated_at=now,
        )
        self.session.add(row)
        try:
            await self.session.flush()
        except IntegrityError:
            # The same key, sent twice at once: the other request won.
            await self.session.rollback()
            assert idempotency_key is not None
            existing = await self._by_idempotency_key(user, idempotency_key, digest)
            assert existing is not None
            return await self.get(str(existing.id))
        assert row.id is not None
        row.workflow_id = workflow_id(self.settings.workflow_id_prefix, str(definition.id), str(row.id))
        await self.session.commit()

        try:
            payload = self._input(row, definition.document, context)
            await self._start_workflow(
                row, payload, memo={"definitionName": definition.name, "startedBy": user.username}
            )
        except BaseException as exc:
            if not _start_in_doubt(exc):
                # Temporal certainly has no run of it: nothing of it may stay behind.
                await self.session.delete(row)
                await self.session.commit()
                raise
            # The request may have reached Temporal and only the answer got lost: deleting the row
            # would orphan a run that goes on. It stays RUNNING: a run that exists publishes into
            # it, and the reconciler fails it once Temporal has had no run of it for the grace period.
            log.warning(
                "execution %s: Temporal did not confirm the start (%s); kept for the reconciler", row.id, exc
            )
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ServiceUnavailable(
                f"Temporal did not confirm the start of execution {row.id}; it may be running. "
                "Retry with the same Idempotency-Key to get it (or see it in the list).",
                headers={"Retry-After": "5"},
                executionId=str(row.id),
            ) from exc
        return ExecutionDetail(row, [])

    async def cancel(self, user: Principal, execution_id: str) -> ExecutionDetail:
        """Cancel a running execution and answer with its cancelled state (409 once finished)."""
        row = await self._row(execution_id)
        if ExecutionStatus(row.status).finished:
            raise ExecutionConflict(f"Execution {execution_id} is already {row.status}.")
        handle = self.temporal.get_workflow_handle(row.workflow_id)
        async with temporal_errors("cancel the execution"):
            try:
                await handle.cancel()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                raise ExecutionConflict(f"Execution {execution_id} has already finished.") from exc
            with contextlib.suppress(WorkflowFailureError, TimeoutError):
                # The run closes once every task is marked; its last events are written as it closes.
                async with asyncio.timeout(self.settings.cancel_wait_seconds):
                    await handle.result()
        if row.id is not None:
            await self._until(row.id, lambda current: ExecutionStatus(current.status).finished)
        log.info("execution %s cancelled by %s", execution_id, user.username)
        return await self._reloaded(execution_id)

    async def retry_task(self, user: Principal, task_execution_id: str) -> TaskExecutionRow:
        """Run a FAILED task again. A failed execution reopens under the same id (a new Temporal run
        that carries completed tasks and the context over); a running one retries in place."""
        task = await self._task_row(task_execution_id)
        execution = await self.session.get(ExecutionRow, task.execution_id)
        assert execution is not None
        if task.status != TaskStatus.FAILED:
            raise ExecutionConflict(
                f"Task execution {task_execution_id} is {task.status}; only a FAILED task can be retried."
            )
        if execution.status == ExecutionStatus.RUNNING:
            await self._update(execution, "retry_task", task.task_definition_id)
        elif execution.status == ExecutionStatus.FAILED:
            await self._reopen(execution, task, user)
        else:
            raise ExecutionConflict(
                f"Execution {execution.id} was {execution.status}; it cannot be reopened."
            )
        log.info(
            "task %s of execution %s retried by %s", task.task_definition_id, execution.id, user.username
        )
        return await self._task_row(task_execution_id, reload=True)

    async def decide(
        self, user: Principal, task_execution_id: str, *, approve: bool, value: Any
    ) -> TaskExecutionRow:
        """Complete (with an output) or reject a WAITING approval task."""
        task = await self._task_row(task_execution_id)
        execution = await self.session.get(ExecutionRow, task.execution_id)
        assert execution is not None
        if (
            task.type != "approval"
            or task.status != TaskStatus.WAITING
            or execution.status != ExecutionStatus.RUNNING
        ):
            raise ExecutionConflict(
                f"Task execution {task_execution_id} is not an approval waiting for a decision."
            )
        if approve:
            size = len(compact_json(value).encode())
            if size > self.settings.max_result_bytes:
                raise InvalidInput(
                    "The request has 1 problem.",
                    [
                        {
                            "pointer": "#/output",
                            "detail": f"{size} bytes exceed the limit of {self.settings.max_result_bytes}",
                        }
                    ],
                )
        decision = TaskDecision(
            task_id=task.task_definition_id,
            output=value if approve else None,
            reason=None if approve else value,
        )
        await self._update(execution, "complete_task" if approve else "reject_task", decision)
        log.info(
            "approval %s of execution %s %s by %s",
            task.task_definition_id,
            execution.id,
            "completed" if approve else "rejected",
            user.username,
        )
        return await self._task_row(task_execution_id, reload=True)

    # --- Temporal ------------------------------------------------------------------------

    def _input(
        self,
        row: ExecutionRow,
        document: dict[str, Any],
        context: dict[str, Any],
        resume: ResumeState | None = None,
    ) -> InterpreterInput:
        settings = self.settings
        payload = InterpreterInput(
            execution_id=str(row.id),
            definition_id=str(row.definition_id),
            definition_version=row.definition_version,
            tasks=[self._task_spec(t) for t in document["tasks"]],
            sync_points=[
                SyncPointSpec(
                    p["id"], p["name"], p.get("description"), list(p["requiredTasks"]), p.get("timeout")
                )
                for p in document["synchronizationPoints"]
            ],
            context=context,
            options=EngineOptions(
                default_task_timeout=settings.task_default_timeout_seconds,
                heartbeat_timeout=settings.task_heartbeat_timeout_seconds,
                max_result_bytes=settings.max_result_bytes,
                max_context_bytes=settings.max_context_bytes,
                inspect_after=settings.inspect_after_seconds,
                continue_after_events=settings.continue_after_events,
                continue_after_bytes=settings.continue_after_bytes,
            ),
            resume=resume,
            publisher=PUBLISH_BY_RUNNER,
        )
        size = self._size(payload)
        if size > PACK_TASKS_ABOVE_BYTES:
            # Large DAGs travel packed: the same specs at about a tenth of the size.
            payload = dataclasses.replace(payload, tasks=[], packed_tasks=pack_tasks(payload.tasks))
            size = self._size(payload)
        if size > MAX_INPUT_BYTES:
            raise InvalidInput(
                f"The definition and context take {size} bytes, more than one execution can carry ({MAX_INPUT_BYTES}).",
                [{"pointer": "#", "detail": "definition and context too large for one execution"}],
            )
        return payload

    def _size(self, payload: InterpreterInput) -> int:
        return self.temporal.data_converter.payload_converter.to_payloads([payload])[0].ByteSize()

    def _task_spec(self, task: dict[str, Any]) -> TaskSpec:
        policy = task.get("retryPolicy") or {}
        requirements = task.get("resourceRequirements")
        return TaskSpec(
            id=task["id"],
            name=task["name"],
            type=task.get("type", "noop"),
            dependencies=list(task.get("dependencies", [])),
            input=task.get("input"),
            timeout=task.get("timeout"),
            retry=RetrySpec(
                maximum_attempts=policy.get("maxAttempts") or self.settings.task_default_max_attempts,
                initial_interval=policy.get("initialInterval") or 1.0,
                backoff_coefficient=policy.get("backoffCoefficient") or 2.0,
                maximum_interval=policy.get("maximumInterval"),
                non_retryable_error_types=list(policy.get("nonRetryableErrors") or []),
            ),
            queue=(requirements or {}).get("queue") or self.settings.default_task_queue,
            requirements=requirements,
        )

    async def _start_workflow(
        self, row: ExecutionRow, payload: InterpreterInput, memo: dict[str, Any]
    ) -> None:
        attributes = TypedSearchAttributes(
            [
                SearchAttributePair(_ATTRIBUTE_KEYS["WfoDefinitionId"], str(row.definition_id)),
                SearchAttributePair(_ATTRIBUTE_KEYS["WfoDefinitionVersion"], row.definition_version),
                SearchAttributePair(_ATTRIBUTE_KEYS["WfoExecutionId"], str(row.id)),
            ]
        )
        async with temporal_errors("start the execution"):
            await self.temporal.start_workflow(
                INTERPRETER_WORKFLOW,
                payload,
                id=row.workflow_id,
                task_queue=self.settings.default_task_queue,
                # A failed execution may reopen under its id (task retry); a completed or
                # cancelled one never starts again.
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                search_attributes=attributes,
                memo={
                    **memo,
                    "executionId": str(row.id),
                    "definitionId": str(row.definition_id),
                    "definitionVersion": row.definition_version,
                },
                static_summary=f"Execution {row.id} of definition {row.definition_id} v{row.definition_version}",
                # Past this the start is in doubt (see start()); the reconciler's grace outlasts it.
                rpc_timeout=timedelta(seconds=self.settings.start_timeout_seconds),
            )

    async def _update(self, execution: ExecutionRow, name: str, argument: Any) -> None:
        handle = self.temporal.get_workflow_handle(execution.workflow_id)
        async with temporal_errors(name.replace("_", " ")):
            try:
                answer = await handle.execute_update(name, argument, rpc_timeout=timedelta(seconds=60))
            except WorkflowUpdateFailedError as exc:
                cause = exc.cause
                if isinstance(cause, ApplicationError) and cause.type in ("Conflict", "Closed", "NotFound"):
                    raise ExecutionConflict(cause.message) from exc
                raise
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:  # the run closed meanwhile
                    raise ExecutionConflict(f"Execution {execution.id} has finished.") from exc
                raise
        await self._until_shown(execution, answer)

    async def _reopen(self, execution: ExecutionRow, task: TaskExecutionRow, user: Principal) -> None:
        tasks = (
            (await self.tasks_of([execution.id])).get(execution.id, []) if execution.id is not None else []
        )
        reached = (
            await self.session.exec(
                select(MilestoneRow.key).where(
                    MilestoneRow.execution_id == execution.id,
                    col(MilestoneRow.key).startswith("sync:"),
                    col(MilestoneRow.achieved_at).is_not(None),
                )
            )
        ).all()
        open_blockers = await self.session.exec(
            select(BlockerRow).where(
                BlockerRow.execution_id == execution.id, col(BlockerRow.resolved_at).is_(None)
            )
        )
        task_ids = {t.id: t.task_definition_id for t in tasks}
        carried = [
            TaskCarryOver(
                t.task_definition_id, t.status, t.attempts, t.start_time, t.end_time, t.error, t.resources
            )
            for t in tasks
        ]
        resume = ResumeState(
            # Packed: thousands of task states and a large context would not fit one payload.
            tasks=[],
            context={},
            packed=pack_carry(carried, execution.context),
            # The reopened run knows the blockers still open, so it can resolve them later.
            blockers=[
                {
                    "key": b.key,
                    "kind": b.kind,
                    "description": b.description,
                    "taskId": task_ids.get(b.task_execution_id),
                    "createdAt": b.created_at.isoformat(),
                }
                for b in open_blockers
            ],
            context_version=execution.context_version,
            last_seq=execution.last_seq,
            started_at=execution.start_time,
            reached_sync_points=[key.removeprefix("sync:") for key in reached],
            retry_task_id=task.task_definition_id,
        )
        version = await self._version(execution)
        payload = self._input(execution, version.document, {}, resume)
        # The memo of every run says the same of the execution (Temporal's UI shows the latest run).
        starter = await self.session.get(UserRow, execution.created_by) if execution.created_by else None
        memo = {
            "definitionName": version.name,
            "startedBy": starter.username if starter else None,
            "reopenedBy": user.username,
            "reopenedFor": task.task_definition_id,
        }
        try:
            await self._start_workflow(execution, payload, memo=memo)
        except WorkflowAlreadyStartedError as exc:
            raise ExecutionConflict(f"Execution {execution.id} is being reopened already.") from exc
        # Answer once the rerun task is scheduled and the read model shows it.
        handle = self.temporal.get_workflow_handle(execution.workflow_id)
        with contextlib.suppress(WorkflowUpdateFailedError, RPCError):
            answer = await handle.execute_update(
                "task_state", task.task_definition_id, rpc_timeout=timedelta(seconds=60)
            )
            await self._until_shown(execution, answer)

    async def _until_shown(self, execution: ExecutionRow, answer: Any) -> None:
        """Wait (briefly) until the read model has what the workflow answered an update with: the
        events of the activation that ends a run are written just after Temporal has taken its end."""
        sequence = answer.get("sequence") if isinstance(answer, dict) else None
        if sequence is None or execution.id is None:
            return
        await self._until(execution.id, lambda row: row.last_seq >= sequence)

    async def _until(self, execution_id: int, shown: Any, timeout: float = READ_MODEL_WAIT_SECONDS) -> None:
        # Its own connection, a fresh snapshot each time (SQLite's WAL keeps a reader's), and the
        # session's objects left as they are.
        query = sa.select(col(ExecutionRow.last_seq), col(ExecutionRow.status)).where(
            col(ExecutionRow.id) == execution_id
        )
        engine = self.session.bind
        assert isinstance(engine, AsyncEngine)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    async with engine.connect() as conn:
                        row = (await conn.execute(query)).first()
                    if row is None or shown(row):
                        return
                    await asyncio.sleep(0.02)

    # --- rows ----------------------------------------------------------------------------

    async def _row(self, execution_id: str) -> ExecutionRow:
        key = parse_id(execution_id)
        row = await self.session.get(ExecutionRow, key) if key is not None else None
        if row is None:
            raise ExecutionNotFound(execution_id)
        return row

    async def _reloaded(self, execution_id: str) -> ExecutionDetail:
        self.session.expire_all()
        return await self.get(execution_id)

    async def _task_row(self, task_execution_id: str, *, reload: bool = False) -> TaskExecutionRow:
        key = parse_id(task_execution_id)
        row = (
            await self.session.get(TaskExecutionRow, key, populate_existing=reload)
            if key is not None
            else None
        )
        if row is None:
            raise TaskExecutionNotFound(task_execution_id)
        return row

    async def tasks_of(
        self, execution_ids: Sequence[int | None]
    ) -> dict[int | None, builtins.list[TaskExecutionRow]]:
        """Task executions of several executions in one query."""
        ids = [i for i in execution_ids if i is not None]
        grouped: dict[int | None, list[TaskExecutionRow]] = {i: [] for i in ids}
        if not ids:
            return grouped
        rows = await self.session.exec(
            select(TaskExecutionRow)
            .where(col(TaskExecutionRow.execution_id).in_(ids))
            .order_by(col(TaskExecutionRow.id))
        )
        for row in rows:
            grouped[row.execution_id].append(row)
        return grouped

    async def _document(self, execution: ExecutionRow) -> dict[str, Any]:
        """The definition the execution runs (kept even if the definition changed or went)."""
        return (await self._version(execution)).document

    async def _version(self, execution: ExecutionRow) -> DefinitionVersionRow:
        """The definition version the execution runs."""
        return (
            await self.session.exec(
                select(DefinitionVersionRow).where(
                    DefinitionVersionRow.definition_id == execution.definition_id,
                    DefinitionVersionRow.version == execution.definition_version,
                )
            )
        ).one()

    async def _by_idempotency_key(self, user: Principal, key: str, digest: str) -> ExecutionRow | None:
        row = (
            await self.session.exec(
                select(ExecutionRow).where(
                    ExecutionRow.created_by == user.id, ExecutionRow.idempotency_key == key
                )
            )
        ).first()
        if row is not None and row.request_digest != digest:
            raise InvalidInput(
                "This Idempotency-Key was used with a different request.",
                [
                    {
                        "parameter": "Idempotency-Key",
                        "in": "header",
                        "detail": "already used with another request body",
                    }
                ],
            )
        return row
