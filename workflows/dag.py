"""The rules of a DAG run, apart from Temporal: what may start, what a synchronization point still needs.

Pure and deterministic: plain Python, no `temporalio`, no clock, no I/O. The interpreter
(workflows/interpreter.py) tells the machine what happened to a node (a task completed, a failed
task is pending again, a synchronization point was missed) and asks what follows: the tasks that
may start now, in definition order, and the synchronization points a completion reaches, in
order. What happens then (events, activities, timers, milestones) stays in the interpreter.

```python
dag = DagMachine([("a", []), ("b", ["a"]), ("c", ["s"])], [("s", ["a", "b"])])
dag.start_ready()                   # every task without dependencies is ready: {"a"}
dag.take_ready()                    # ["a"], in definition order
dag.started("a")                    # the interpreter started it
dag.node_done("a")                  # [] (no point reached); "b" is ready now
dag.take_ready(); dag.started("b"); dag.node_done("b")   # ["s"]: reached, so "c" is ready
```

Each task is PENDING, STARTED (running or waiting), COMPLETED, FAILED or CANCELLED here; the
interpreter keeps the richer record (RUNNING or WAITING, attempts, times, errors) and reports each
change. A move the rules do not allow (completing a task that never started, starting one twice)
raises DagError: a bug shows at once instead of a DAG that quietly stops. Once halted (the
execution failed or is being cancelled) nothing more is made ready. The invariants (a task is ready
only once all it depends on is done, each point is reached once, a missed point releases nothing,
every task ends in one state) are checked with generated DAGs in tests/test_dag_machine.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: (node id, what it waits on): a task and its dependencies, or a point and its required tasks.
Node = tuple[str, Sequence[str]]

PENDING, STARTED, COMPLETED, FAILED, CANCELLED = "PENDING", "STARTED", "COMPLETED", "FAILED", "CANCELLED"


class DagError(Exception):
    """A change the rules do not allow: the interpreter's bookkeeping and the machine disagree."""


class DagMachine:
    """Readiness and synchronization points of one run. Tasks may depend on tasks and on points;
    points require tasks. Counting is incremental: a completion costs its out-degree."""

    def __init__(self, tasks: Sequence[Node], sync_points: Sequence[Node]) -> None:
        self.order = {task_id: index for index, (task_id, _) in enumerate(tasks)}
        self.dependents: dict[str, list[str]] = {}  # node -> tasks that depend on it
        self.gates: dict[str, list[str]] = {}  # task -> synchronization points that require it
        for task_id, dependencies in tasks:
            for dependency in dependencies:
                self.dependents.setdefault(dependency, []).append(task_id)
        for point_id, required in sync_points:
            for task_id in required:
                self.gates.setdefault(task_id, []).append(point_id)
        self.unmet = {task_id: len(set(dependencies)) for task_id, dependencies in tasks}
        self.sync_unmet = {point_id: len(set(required)) for point_id, required in sync_points}
        self.status = {task_id: PENDING for task_id, _ in tasks}
        #: Tasks STARTED now (kept as a count: `settled` is asked on every pass of a 10,000-task run).
        self.started_count = 0
        #: Tasks whose dependencies are all done and that have not been taken yet.
        self.ready: set[str] = set()
        #: Nothing more starts (the execution failed, or is being cancelled).
        self.halted = False
        #: Tasks completed (each counted once).
        self.completed = 0
        self.reached: set[str] = set()
        self.missed: set[str] = set()

    # --- what happened ----------------------------------------------------------------------

    def started(self, task_id: str) -> None:
        self._move(task_id, PENDING, STARTED)

    def node_done(self, task_id: str) -> list[str]:
        """A started task completed: count it off for what waits on it. The synchronization points
        it reaches, in definition order; each is counted off in turn."""
        self._move(task_id, STARTED, COMPLETED)
        reached: list[str] = []
        self._done(task_id, reached, announce=True)
        return reached

    def failed(self, task_id: str) -> None:
        """A started task failed: what depends on it waits (a retry may release it)."""
        self._move(task_id, STARTED, FAILED)

    def cancelled(self, task_id: str) -> None:
        self._move(task_id, STARTED, CANCELLED)

    def retried(self, task_id: str) -> None:
        """A failed task is pending again: its dependencies were done (it ran), so it is ready."""
        self._move(task_id, FAILED, PENDING)
        if not self.halted:
            self.ready.add(task_id)

    def restore(self, status: dict[str, str], reached: Iterable[str]) -> None:
        """A resumed run (continued, or a failed execution reopened): each task's state from before
        (COMPLETED, FAILED, STARTED for an approval or sleep that waits on; the rest PENDING), and the
        points reached before. Completed tasks count as done; no point is reached again."""
        self.reached |= set(reached)
        for task_id in self.order:
            state = status.get(task_id, PENDING)
            if state not in (PENDING, STARTED, COMPLETED, FAILED):
                raise DagError(f"task {task_id} cannot resume as {state}")
            self.status[task_id] = state
        self.started_count = sum(state == STARTED for state in self.status.values())
        for task_id in self.order:
            if self.status[task_id] == COMPLETED:
                self._done(task_id, [], announce=False)

    def point_missed(self, point_id: str) -> None:
        """A point's deadline passed: it is never reached, and what depends on it never starts."""
        self.missed.add(point_id)

    # --- what may start -----------------------------------------------------------------------

    def start_ready(self) -> None:
        """At the start of a run: every pending task with nothing left to wait for is ready."""
        self.ready |= {
            task_id for task_id, count in self.unmet.items() if count == 0 and self.pending(task_id)
        }

    def take_ready(self) -> list[str]:
        """The ready tasks, in definition order; they are no longer ready (the caller starts them,
        or defers the ones that do not fit). Nothing once halted."""
        ready, self.ready = sorted(self.ready, key=self.order.__getitem__), set()
        return [] if self.halted else [task_id for task_id in ready if self.pending(task_id)]

    def defer(self, task_ids: Iterable[str]) -> None:
        """Taken tasks that did not start now (they did not fit): ready again for the next pass."""
        self.ready.update(task_ids)

    def halt(self) -> None:
        """Nothing more starts (the execution failed, or is being cancelled); running tasks may still end."""
        self.halted = True
        self.ready = set()

    # --- questions --------------------------------------------------------------------------------

    def pending(self, task_id: str) -> bool:
        return self.status[task_id] == PENDING

    def settled(self) -> bool:
        """Nothing is started and nothing more can start."""
        return not self.ready and self.started_count == 0

    def all_completed(self) -> bool:
        return self.completed == len(self.order)

    def failed_tasks(self) -> list[str]:
        return [task_id for task_id in self.order if self.status[task_id] == FAILED]

    # --- counting -------------------------------------------------------------------------------

    def _move(self, task_id: str, before: str, after: str) -> None:
        if self.status[task_id] != before:
            raise DagError(f"task {task_id} is {self.status[task_id]}: it cannot become {after}")
        self.status[task_id] = after
        self.started_count += (after == STARTED) - (before == STARTED)

    def _done(self, node_id: str, reached: list[str], *, announce: bool) -> None:
        for dependent in self.dependents.get(node_id, ()):
            self.unmet[dependent] -= 1
            if self.unmet[dependent] == 0 and self.pending(dependent) and not self.halted:
                self.ready.add(dependent)
        if node_id not in self.order:
            return  # a point: nothing requires points
        self.completed += 1
        for point_id in self.gates.get(node_id, ()):
            self.sync_unmet[point_id] -= 1
            if self.sync_unmet[point_id] != 0 or point_id in self.missed:
                continue
            if announce:
                self.reached.add(point_id)
                reached.append(point_id)
                self._done(point_id, reached, announce=True)
            elif point_id in self.reached:
                self._done(point_id, reached, announce=False)
