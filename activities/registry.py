"""The task types and python functions a worker runs, and the wrapper every task activity shares.

Two decorators extend a worker (`wfo-worker --load MODULE` imports the module that uses them):

```python
from activities.registry import task_function, task_type

@task_function("greet")                     # a definition runs it with type "python"
def greet(input: dict, context: dict) -> dict:
    return {"greeting": f"hello {input['name']}"}

@task_type("resize-image")                  # a definition runs it with type "resize-image"
async def resize_image(task: TaskInput) -> dict:
    ...
```

Every task activity, built-in or custom, goes through `run_task`: the input's `${...}` references
are rendered from the context, the task's resource requirements are reserved from the worker's
capacity, a background heartbeat keeps cancellation and crash detection working, the result's
JSON size is checked against `max_result_bytes`, and the result comes back as a TaskOutcome that
says where it ran. Failures leave as ApplicationError whose first detail is
`{"worker", "attempt", "queue"}` and whose type is the original exception's class name, so a
definition's `retryPolicy.nonRetryableErrors: ["ValueError"]` matches.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import importlib
import inspect
import json
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import CancelledError as TemporalCancelledError

from activities.capacity import capacity, worker_identity
from activities.templating import render
from workflows.constants import UNKNOWN_TASK_TYPE
from workflows.inputs import TaskInput, TaskOutcome

#: The API's pattern for a task type; python function names follow it too.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
#: Task types the interpreter workflow runs itself (timers, signals); no activity may take them.
WORKFLOW_TASK_TYPES = frozenset({"sleep", "approval"})
#: Seconds between heartbeats (at most; a third of the heartbeat timeout when that is shorter).
HEARTBEAT_INTERVAL = 5.0

RESULT_TOO_LARGE = "ResultTooLarge"
INVALID_RESULT = "InvalidResult"

#: `fn(input, context)` for the `python` task type: `input` is the task's rendered input without
#: its `function` key, `context` the execution context; returns JSON. Sync or async.
TaskFunction = Callable[[dict[str, Any], dict[str, Any]], Any]
#: `fn(task)` for a custom task type: the TaskInput with its `input` rendered; returns JSON. Sync or async.
TaskHandler = Callable[[TaskInput], Any]
TaskActivity = Callable[[TaskInput], Awaitable[TaskOutcome]]

F = TypeVar("F", bound=Callable[..., Any])

_current_task: contextvars.ContextVar[TaskInput] = contextvars.ContextVar("wfo_current_task")


class Registry:
    """Named python functions (for the `python` type) and task types (each one activity)."""

    def __init__(self) -> None:
        self._functions: dict[str, TaskFunction] = {}
        self._activities: dict[str, TaskActivity] = {}

    def task_function(self, name: str) -> Callable[[F], F]:
        """Register `fn(input: dict, context: dict) -> JSON` (sync or async) under `name` for `python` tasks.

        A task `{"type": "python", "input": {"function": name, ...}}` calls it with the rest of its
        rendered input (e.g. `input["args"]`) and the execution context. Sync functions run in a
        thread so heartbeats go on; a long one should poll `activity.is_cancelled()` to stop early.
        Raise `ApplicationError(..., non_retryable=True)` for a failure that retrying cannot fix;
        any other exception is retried and keeps its class name as the error type.
        """

        def decorator(fn: F) -> F:
            _check_name(name, "function")
            if name in self._functions:
                raise ValueError(f"python task function {name!r} is already registered")
            self._functions[name] = fn
            return fn

        return decorator

    def task_type(self, name: str) -> Callable[[F], F]:
        """Register `fn(task: TaskInput) -> JSON` (sync or async) as the task type and activity `name`.

        `task.input` arrives rendered; everything `run_task` does (capacity, heartbeats, result size,
        error details) applies. Returns `fn` unchanged; the activity is `activity(name)`.
        """

        def decorator(fn: F) -> F:
            _check_name(name, "task type")
            if name in WORKFLOW_TASK_TYPES:
                raise ValueError(f"task type {name!r} is run by the workflow itself and cannot be registered")
            if name in self._activities:
                raise ValueError(f"task type {name!r} is already registered")
            self._activities[name] = task_activity(name, fn)
            return fn

        return decorator

    def function(self, name: str) -> TaskFunction | None:
        """The python function registered under `name`, if any."""
        return self._functions.get(name)

    def function_names(self) -> list[str]:
        """Names of the registered python functions, sorted."""
        return sorted(self._functions)

    def activity(self, name: str) -> TaskActivity:
        """The activity of task type `name` (KeyError if not registered)."""
        return self._activities[name]

    def type_names(self) -> list[str]:
        """Names of the registered task types, sorted."""
        return sorted(self._activities)

    def activities(self) -> list[TaskActivity]:
        """The activities of every registered task type."""
        return list(self._activities.values())


#: The process-wide registry the decorators below, the `python` type and the worker use.
registry = Registry()
task_function = registry.task_function
task_type = registry.task_type


def task_activities() -> list[Callable[..., Any]]:
    """Everything a task-queue Worker registers: built-in and custom task types, plus a catch-all
    that fails the attempt of a task type this worker lacks (another worker of the queue may have it)."""
    return [*registry.activities(), unknown_task_type]


def load_modules(names: Iterable[str]) -> list[ModuleType]:
    """Import modules (dotted names) whose decorators register task types or functions; modules
    in the current folder are found too, as with `python -m` (after the project's own)."""
    here = os.getcwd()
    if not any(os.path.abspath(entry or ".") == here for entry in sys.path):
        sys.path.append(here)
    return [importlib.import_module(name.strip()) for name in names if name.strip()]


def current_task() -> TaskInput:
    """The TaskInput of the task running now (for python functions that need its ids)."""
    try:
        return _current_task.get()
    except LookupError:
        raise RuntimeError("not inside a task activity") from None


def task_activity(name: str, handler: TaskHandler) -> TaskActivity:
    """Wrap `handler` as the Temporal activity `name` (what `@task_type` does)."""

    async def run(task: TaskInput) -> TaskOutcome:
        return await run_task(handler, task)

    run.__name__ = run.__qualname__ = f"task_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
    run.__doc__ = handler.__doc__
    return activity.defn(name=name)(run)


async def run_task(handler: TaskHandler, task: TaskInput) -> TaskOutcome:
    """Run one attempt of a task in the current activity: render, reserve, heartbeat, check, report."""
    info = activity.info()
    where: dict[str, Any] = {"worker": worker_identity(), "attempt": info.attempt, "queue": info.task_queue}
    heartbeat = asyncio.create_task(_heartbeat(info.attempt, _heartbeat_interval(info)))
    token = _current_task.set(task)
    try:
        rendered = dataclasses.replace(task, input=render(task.input or {}, task.context))
        async with capacity().reserve(task.requirements):
            # Debug only: at info, a line per task attempt cost a worker 6 % of its time.
            activity.logger.debug(
                "task %s (%s) of execution %s: attempt %d",
                task.task_id,
                info.activity_type,
                task.execution_id,
                info.attempt,
            )
            result = await call(handler, rendered)
        check_result_size(result, task.max_result_bytes)
        return TaskOutcome(result=result, **where)
    except (asyncio.CancelledError, TemporalCancelledError):
        activity.logger.info("task %s of execution %s cancelled", task.task_id, task.execution_id)
        raise
    except ApplicationError as err:
        raise _with_where(err, where) from err.__cause__
    except Exception as err:  # the SDK logs the failure with its traceback
        raise ApplicationError(str(err) or type(err).__name__, where, type=type(err).__name__) from err
    finally:
        _current_task.reset(token)
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async callable; sync ones run in a thread so the event loop (heartbeats) goes on."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await _in_daemon_thread(fn, *args)
    if inspect.isawaitable(result):  # an object whose __call__ is async: its coroutine runs here
        return await result
    return result


async def _in_daemon_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking callable in its own daemon thread, with the caller's context variables.

    Not `asyncio.to_thread`: a cancelled task returns at once either way, but a thread of the
    default executor is joined at exit, so one stuck function would hang the worker's shutdown.
    The function still runs to its end; it can poll `activity.is_cancelled()` to stop sooner.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the task was cancelled meanwhile
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def target() -> None:
        result, error = None, None
        try:
            result = context.run(fn, *args)
        except Exception as err:  # noqa: BLE001 - handed to the awaiting task, which reports it
            error = err
        except BaseException as err:  # noqa: BLE001 - SystemExit and the like must not reach the loop as such
            error = RuntimeError(f"{type(err).__name__}: {err}")
        with contextlib.suppress(RuntimeError):  # the loop closed while the function ran
            loop.call_soon_threadsafe(settle, result, error)

    name = getattr(fn, "__name__", "function")
    threading.Thread(target=target, name=f"wfo-task-{name}", daemon=True).start()
    return await future


def check_result_size(result: Any, limit: int) -> int:
    """The result's compact JSON size in bytes; ResultTooLarge (non-retryable) when over `limit`."""
    try:
        encoded = json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ApplicationError(
            f"the task's result is not JSON: {err}", type=INVALID_RESULT, non_retryable=True
        ) from None
    size = len(encoded.encode())
    if size > limit:
        raise ApplicationError(
            f"the task's result is {size} bytes of JSON, over the limit of {limit} bytes;"
            " store large data elsewhere and return a reference to it",
            {"size": size, "limit": limit},
            type=RESULT_TOO_LARGE,
            non_retryable=True,
        )
    return size


@activity.defn(dynamic=True)
async def unknown_task_type(args: Sequence[RawValue]) -> TaskOutcome:
    """Any task type this worker does not have: fails the attempt, retryably, naming the ones it has.

    Temporal hands a queue's tasks to any of its workers, so another one may have loaded the type;
    the attempts of the task's retry policy bound the search (the workflow shows a blocker meanwhile).
    """
    info = activity.info()
    where: dict[str, Any] = {"worker": worker_identity(), "attempt": info.attempt, "queue": info.task_queue}
    known = ", ".join(registry.type_names()) or "none"
    raise ApplicationError(
        f"task type {info.activity_type!r} is not on worker {where['worker']!r} of queue"
        f" {info.task_queue!r} (it runs {known}); a worker of that queue that loads it"
        f" (wfo-worker --queue {info.task_queue} --load MODULE) runs a later attempt",
        where,
        type=UNKNOWN_TASK_TYPE,
    )


async def _heartbeat(attempt: int, interval: float) -> None:
    """Heartbeat until cancelled, so activity cancellation and worker crashes reach this task."""
    while True:
        activity.heartbeat({"attempt": attempt})
        await asyncio.sleep(interval)


def _heartbeat_interval(info: activity.Info) -> float:
    """Every HEARTBEAT_INTERVAL seconds, or a third of the heartbeat timeout when that is shorter."""
    if info.heartbeat_timeout:
        return max(0.01, min(HEARTBEAT_INTERVAL, info.heartbeat_timeout.total_seconds() / 3))
    return HEARTBEAT_INTERVAL


def _with_where(err: ApplicationError, where: dict[str, Any]) -> ApplicationError:
    """The same ApplicationError with `where` as its first detail (kept if already there)."""
    if err.details and isinstance(err.details[0], dict) and "worker" in err.details[0]:
        return err
    return ApplicationError(
        err.message,
        where,
        *err.details,
        type=err.type,
        non_retryable=err.non_retryable,
        next_retry_delay=err.next_retry_delay,
        category=err.category,
    )


def _check_name(name: str, kind: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} is invalid: a letter, then up to 99 letters, digits, '_', '.' or '-'"
        )


# The built-in types register themselves with `registry` on import; importing them here means any
# user of the registry sees them, whichever module was imported first. Kept last: tasks.py imports
# names defined above.
import activities.tasks  # noqa: F401
