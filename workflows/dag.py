"""The rules of a DAG run, apart from Temporal: what may start, what a synchronization point still needs.

Pure and deterministic: plain Python, no `temporalio`, no clock, no I/O. The interpreter
(workflows/interpreter.py) tells the machine what happened to a node (a task completed, a failed
task is pending again, a synchronization point was missed) and asks what follows: the tasks that
may start now, in definition order, and the synchronization points a completion reaches, in
order. What happens then (events, activities, timers, milestones) stays in the interpreter.

```python
dag = DagMachine([("a", []), ("b", ["a"]), ("c", ["s"])], [("s", ["a", "b"])])
dag.start_ready(pending)            # {"a"}: every task without dependencies
dag.take_ready()                    # ["a"], in definition order; the interpreter starts it
dag.node_done("a", pending)         # [] (no point reached); "b" is ready now
dag.take_ready(); dag.node_done("b", pending)   # ["s"]: the point is reached, so "c" is ready
```

`pending(task_id)` says whether a task is still to run (the interpreter owns task states): a task
that already ran (a resumed run's completed tasks, or a failed one) is not made ready again. The
invariants (a task is ready only once all it depends on is done, each point is reached once, a
missed point releases nothing) are checked with generated DAGs in tests/test_dag_machine.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

#: (node id, what it waits on): a task and its dependencies, or a point and its required tasks.
Node = tuple[str, Sequence[str]]
Pending = Callable[[str], bool]


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
        #: Tasks whose dependencies are all done and that have not been taken yet.
        self.ready: set[str] = set()
        #: Tasks completed (each counted once).
        self.completed = 0
        self.reached: set[str] = set()
        self.missed: set[str] = set()

    # --- what happened ----------------------------------------------------------------------

    def node_done(self, node_id: str, pending: Pending) -> list[str]:
        """A task completed (or a point was reached): count it off for what waits on it. The
        synchronization points it reaches, in definition order; each is counted off in turn."""
        reached: list[str] = []
        self._done(node_id, pending, reached, announce=True)
        return reached

    def restore(self, completed: Iterable[str], reached: Iterable[str], pending: Pending) -> None:
        """A resumed run (continued, or a failed execution reopened): the tasks completed before and
        the points reached before count as done, and no point is reached again."""
        self.reached |= set(reached)
        for task_id in completed:
            self._done(task_id, pending, [], announce=False)

    def retried(self, task_id: str) -> None:
        """A failed task is pending again: its dependencies were done (it ran), so it is ready."""
        self.ready.add(task_id)

    def point_missed(self, point_id: str) -> None:
        """A point's deadline passed: it is never reached, and what depends on it never starts."""
        self.missed.add(point_id)

    # --- what may start -----------------------------------------------------------------------

    def start_ready(self, pending: Pending) -> None:
        """At the start of a run: every pending task with nothing left to wait for is ready."""
        self.ready |= {task_id for task_id, count in self.unmet.items() if count == 0 and pending(task_id)}

    def take_ready(self) -> list[str]:
        """The ready tasks, in definition order; they are no longer ready (the caller starts them)."""
        ready, self.ready = sorted(self.ready, key=self.order.__getitem__), set()
        return ready

    def defer(self, task_ids: Iterable[str]) -> None:
        """Taken tasks that did not start now (they did not fit): ready again for the next pass."""
        self.ready.update(task_ids)

    def clear_ready(self) -> None:
        """Nothing more starts (the execution failed)."""
        self.ready = set()

    # --- counting -------------------------------------------------------------------------------

    def _done(self, node_id: str, pending: Pending, reached: list[str], *, announce: bool) -> None:
        for dependent in self.dependents.get(node_id, ()):
            self.unmet[dependent] -= 1
            if self.unmet[dependent] == 0 and pending(dependent):
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
                self._done(point_id, pending, reached, announce=True)
            elif point_id in self.reached:
                self._done(point_id, pending, reached, announce=False)
