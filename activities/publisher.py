"""The read model runner: the interpreter's events of each activation are written to the read
model before the activation's commands leave for Temporal (see workflows/publishing.py).

A `WorkflowRunner` wrapping the SDK's sandboxed runner: it runs each activation as usual, then
writes what the activation emitted (one transaction, in the activation's own thread, with a
synchronous connection) and only then hands the completion back to the SDK. Replayed activations
emitted nothing new and write nothing. When the write fails (database down, a lock held too
long) the activation fails instead: Temporal retries the workflow task, nothing the workflow
decided in it has happened, and its history gains one failed workflow task at most, however
long the database is away.

The activation that ends the execution (complete, fail, cancel) is the exception:
Temporal refuses such a completion when something new arrived meanwhile (a cancel, an update),
and the retried workflow task may then decide otherwise. Its events are held, and written only
once the SDK reports that Temporal took the completion (the run's eviction, with the reason
"workflow execution ending"); if Temporal refused it, they are dropped, and the retry says
what happened instead. Should that write fail, it is retried in the background; should the
worker die first, the reconciler repairs the execution from Temporal's record.

The whole activation must finish inside the SDK's deadlock detection (2 s), so one write may
take `WRITE_TIMEOUT` seconds at most.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from temporalio.bridge.proto.workflow_activation import RemoveFromCache, WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.converter import StorageDriverStoreContext, StorageDriverWorkflowInfo
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.workflow import Info

from api.services.readmodel import SequenceGap, write_batches
from workflows import publishing
from workflows.inputs import EventBatch

log = logging.getLogger(__name__)

#: Seconds one write may take: well inside the SDK's 2 s deadlock detection of an activation.
WRITE_TIMEOUT = 1.5
#: The workflow-task failure type Temporal shows while the read model cannot be written.
FAILURE_TYPE = "ReadModelUnavailable"
#: Commands that end an execution. (A run that continues as new is not held: its successor starts
#: at once and must find its events written, and it decides the same on a retry.)
_CLOSING = frozenset({"complete_workflow_execution", "fail_workflow_execution", "cancel_workflow_execution"})
#: How long a batch waits for an earlier one still on its way (inside WRITE_TIMEOUT).
GAP_PATIENCE = 1.0
#: How long a held final batch is retried in the background before the reconciler is left to it.
FINAL_RETRY_SECONDS = 3600.0


@dataclass
class _Pending:
    batch: EventBatch
    done: bool = False
    applied: int = 0
    error: Exception | None = None


class BatchWriter:
    """Writes event batches through a synchronous engine (see api.db.create_writer_engine), with
    group commit: one writer at a time in the process takes every batch waiting at that moment
    and writes them in one transaction, one statement per kind of change for all of them. Alone,
    a batch is written at once; under load, activations finishing together share a commit."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        # One writer at a time (SQLite takes one anyway, and queueing here beats its busy handler,
        # which sleeps in steps of up to 100 ms); the others' batches wait in the queue.
        self._writer = threading.Lock()
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()

    def __call__(self, batch: EventBatch, patience: float = GAP_PATIENCE) -> int:
        deadline = time.monotonic() + patience
        while True:
            pending = self._submit(batch)
            if pending.error is None:
                return pending.applied
            if not isinstance(pending.error, SequenceGap) or time.monotonic() >= deadline:
                raise pending.error
            # The previous run's last events (written as it closed) are a moment behind.
            time.sleep(0.02)

    def _submit(self, batch: EventBatch) -> _Pending:
        pending = _Pending(batch)
        with self._queue_lock:
            self._queue.append(pending)
        with self._writer:
            if not pending.done:  # not written by the writer before: write all that waits
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._write(group)
        return pending

    def _write(self, group: list[_Pending]) -> None:
        # Each execution's batches in sequence order (a run continued as new, and its successor).
        group.sort(key=lambda p: (int(p.batch.execution_id), p.batch.events[0].seq if p.batch.events else 0))
        try:
            with self.engine.begin() as conn:
                applied = write_batches(conn, [p.batch for p in group])
            for pending, count in zip(group, applied, strict=True):
                pending.applied = count
        except Exception as exc:  # noqa: BLE001
            if len(group) == 1:
                group[0].error = exc
            else:
                # One batch spoiled the group: each on its own, so that only its workflow task fails.
                for pending in group:
                    try:
                        with self.engine.begin() as conn:
                            pending.applied = write_batches(conn, [pending.batch])[0]
                    except Exception as single:  # noqa: BLE001
                        pending.error = single
        finally:
            for pending in group:
                pending.done = True


class ReadModelRunner(WorkflowRunner):
    """Runs workflows with `inner` (the sandbox) and writes their events after every activation."""

    def __init__(
        self,
        inner: WorkflowRunner,
        writer: BatchWriter,
        loop: asyncio.AbstractEventLoop,
        *,
        plain_converter: bool = False,
    ) -> None:
        self.inner = inner
        self.writer = writer
        self.loop = loop
        #: The worker's data converter uses no serialization contexts (the default one, with or
        #: without the encryption codec; no external storage): the SDK then need not ask the sandbox
        #: for a context per payload, which compiles and runs code in the sandbox for every ask.
        self.plain_converter = plain_converter
        self._retries: set[asyncio.Task[None]] = set()

    def prepare_workflow(self, defn: Any) -> None:
        self.inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _PublishingInstance(self.inner.create_instance(det), self, det.info)

    def set_worker_level_failure_exception_types(self, types: Sequence[type[BaseException]]) -> None:
        self.inner.set_worker_level_failure_exception_types(types)

    def write_final(self, batch: EventBatch) -> None:
        """A run's last events, Temporal having taken its end: written now, or retried later."""
        try:
            self.writer(batch)
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "execution %s: final events not written (%s); retrying in the background",
                batch.execution_id,
                _reason(exc),
            )
            self.loop.call_soon_threadsafe(self._retry_later, batch)

    def _retry_later(self, batch: EventBatch) -> None:
        task = self.loop.create_task(self._retry(batch))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, batch: EventBatch) -> None:
        delay, waited = 0.5, 0.0
        while waited < FINAL_RETRY_SECONDS:
            await asyncio.sleep(delay)
            waited += delay
            try:
                await asyncio.to_thread(self.writer, batch)
                log.info("execution %s: final events written after a retry", batch.execution_id)
                return
            except Exception as exc:  # noqa: BLE001
                log.warning(
                    "execution %s: final events still not written (%s)", batch.execution_id, _reason(exc)
                )
            delay = min(delay * 2, 30.0)
        log.error(
            "execution %s: final events given up; the reconciler will repair the execution",
            batch.execution_id,
        )


class _PublishingInstance(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance, runner: ReadModelRunner, info: Info) -> None:
        self.inner = inner
        self.runner = runner
        self.workflow_id = info.workflow_id
        # What the SDK's own instance answers for this workflow and its activities (the only
        # commands the interpreter has that carry payloads).
        self.store_context = StorageDriverStoreContext(
            target=StorageDriverWorkflowInfo(
                id=info.workflow_id, run_id=info.run_id, type=info.workflow_type, namespace=info.namespace
            )
        )
        #: The events of the activation that ended the run, until Temporal has taken that end.
        self.held: EventBatch | None = None

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        eviction = next(
            (job.remove_from_cache for job in act.jobs if job.HasField("remove_from_cache")), None
        )
        with publishing.collecting() as collected:
            completion = self.inner.activate(act)
        if eviction is not None:
            # Torn down: what its coroutines say on the way out is not news. A held end is news
            # once Temporal has taken it; refused, the retried workflow task says what happened.
            held, self.held = self.held, None
            if (
                held is not None
                and eviction.reason == RemoveFromCache.EvictionReason.WORKFLOW_EXECUTION_ENDING
            ):
                self.runner.write_final(held)
            return completion
        # A failed activation sends no commands (Temporal retries the task): its events go nowhere
        # either. A replayed one re-emits what was written when it first ran.
        if not collected.events or act.is_replaying or completion.WhichOneof("status") != "successful":
            return completion
        assert collected.execution_id is not None
        batch = EventBatch(collected.execution_id, self.workflow_id, act.run_id, collected.events)
        if any(command.WhichOneof("variant") in _CLOSING for command in completion.successful.commands):
            self.held = batch
            return completion
        try:
            self.runner.writer(batch)
        except Exception as exc:  # any failure to write: the workflow task is retried, nothing is lost  # noqa: BLE001
            reason = _reason(exc)
            log.warning(
                "execution %s: read model not written (%s); Temporal retries the workflow task",
                batch.execution_id,
                reason,
            )
            return _failed(
                act.run_id, f"the read model could not be written ({reason}); the workflow task is retried"
            )
        return completion

    def get_serialization_context(self, command_info: Any) -> Any:
        if self.runner.plain_converter:
            return None
        return self.inner.get_serialization_context(command_info)

    def get_external_store_context(self, command_info: Any) -> Any:
        if self.runner.plain_converter:
            return self.store_context  # no external storage: never used
        return self.inner.get_external_store_context(command_info)

    def get_info(self) -> Any:
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        return self.inner.get_thread_id()


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _failed(run_id: str, message: str) -> WorkflowActivationCompletion:
    completion = WorkflowActivationCompletion(run_id=run_id)
    completion.failed.failure.message = message[:2000]
    completion.failed.failure.application_failure_info.type = FAILURE_TYPE
    return completion
