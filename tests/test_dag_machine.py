"""The DAG's rules alone (workflows/dag.py): generated DAGs with synchronization points, run in
generated orders with failures, retries and missed deadlines, against an oracle that decides
from scratch what may start. No Temporal here: the interpreter's tests and the replay test show
that the workflow uses the machine as it used its own bookkeeping before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workflows.dag import CANCELLED, COMPLETED, FAILED, PENDING, STARTED, DagError, DagMachine, Node


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[Node], list[Node]]:
    """Tasks t0..tn-1 depending on earlier tasks and on points; a point requires tasks before its
    place, and only later tasks depend on it: acyclic by construction."""
    count = draw(st.integers(1, 9))
    task_ids = [f"t{i}" for i in range(count)]
    places: list[tuple[str, list[str], int]] = []
    for index in range(draw(st.integers(0, 3))):
        place = draw(st.integers(1, count))
        required = draw(st.lists(st.sampled_from(task_ids[:place]), min_size=1, max_size=3, unique=True))
        places.append((f"s{index}", required, place))
    tasks: list[Node] = []
    for index, task_id in enumerate(task_ids):
        candidates = task_ids[:index] + [point for point, _, place in places if place <= index]
        dependencies = (
            draw(st.lists(st.sampled_from(candidates), max_size=3, unique=True)) if candidates else []
        )
        tasks.append((task_id, dependencies))
    return tasks, [(point, required) for point, required, _ in places]


@dataclass
class Run:
    """A run of the machine, and what the oracle says it should do."""

    tasks: list[Node]
    points: list[Node]
    dag: DagMachine = field(init=False)
    status: dict[str, str] = field(init=False)
    reached: list[str] = field(default_factory=list)
    missed: set[str] = field(default_factory=set)
    taken: list[str] = field(default_factory=list)
    retries: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dag = DagMachine(self.tasks, self.points)
        self.status = {task_id: PENDING for task_id, _ in self.tasks}
        self.dag.start_ready()
        self.dependencies = dict(self.tasks)
        self.required = dict(self.points)

    def pending(self, task_id: str) -> bool:
        return self.status[task_id] == PENDING

    def done(self, node: str) -> bool:
        return node in self.reached if node in self.required else self.status[node] == COMPLETED

    def may_start(self) -> set[str]:
        """The oracle: pending tasks whose every dependency is done."""
        return {
            task_id
            for task_id, dependencies in self.tasks
            if self.pending(task_id) and all(self.done(d) for d in dependencies)
        }

    def take(self) -> list[str]:
        assert self.dag.status == self.status, "the machine's states are the oracle's"
        ready = self.dag.take_ready()
        order = [task_id for task_id, _ in self.tasks]
        assert ready == sorted(ready, key=order.index), "in definition order"
        assert set(ready) == self.may_start(), "ready exactly when every dependency is done"
        for task_id in ready:
            self.status[task_id] = STARTED
            self.dag.started(task_id)
        self.taken += ready
        return ready

    def complete(self, task_id: str) -> None:
        self.status[task_id] = COMPLETED
        newly = [
            point
            for point, required in self.points
            if task_id in required
            and point not in self.reached
            and point not in self.missed
            and all(self.status[t] == COMPLETED for t in required)
        ]
        assert self.dag.node_done(task_id) == newly, "the points it reaches, in order"
        self.reached += newly

    def fail(self, task_id: str) -> None:
        self.status[task_id] = FAILED
        self.dag.failed(task_id)

    def retry(self, task_id: str) -> None:
        self.retries[task_id] = self.retries.get(task_id, 0) + 1
        self.status[task_id] = PENDING
        self.dag.retried(task_id)

    def miss(self, point: str) -> None:
        self.missed.add(point)
        self.dag.point_missed(point)


def drive(run: Run, data: st.DataObject, *, failures: bool, misses: bool) -> None:
    """Take what is ready, end running tasks in a drawn order, until nothing runs or can start."""
    running: list[str] = []
    while True:
        running += run.take()
        if misses and data.draw(st.booleans(), label="miss a point now"):
            open_points = [p for p, _ in run.points if p not in run.reached and p not in run.missed]
            if open_points:
                run.miss(data.draw(st.sampled_from(open_points), label="point missed"))
        if not running:
            assert not run.dag.ready and not run.may_start(), "settled: nothing more can start"
            assert run.dag.settled() and run.dag.status == run.status
            assert run.dag.started_count == 0
            return
        assert not run.dag.settled()
        assert run.dag.started_count == sum(state == STARTED for state in run.status.values())
        task_id = running.pop(data.draw(st.integers(0, len(running) - 1), label="ends next"))
        if failures and data.draw(st.integers(0, 3), label="outcome") == 0:
            run.fail(task_id)
            if data.draw(st.booleans(), label="retried"):
                run.retry(task_id)
        else:
            run.complete(task_id)


@settings(max_examples=300, deadline=None)
@given(dags(), st.data())
def test_without_failures_every_task_runs_once_and_every_point_is_reached_once(
    dag: tuple[list[Node], list[Node]], data: st.DataObject
) -> None:
    run = Run(*dag)
    drive(run, data, failures=False, misses=False)
    assert sorted(run.taken) == sorted(task_id for task_id, _ in run.tasks), "each task taken exactly once"
    assert set(run.status.values()) == {COMPLETED}
    assert run.dag.completed == len(run.tasks)
    assert sorted(run.reached) == sorted(point for point, _ in run.points) and len(set(run.reached)) == len(
        run.reached
    )


@settings(max_examples=300, deadline=None)
@given(dags(), st.data())
def test_failures_and_missed_points_hold_back_only_what_depends_on_them(
    dag: tuple[list[Node], list[Node]], data: st.DataObject
) -> None:
    run = Run(*dag)
    drive(run, data, failures=True, misses=True)
    assert run.dag.completed == sum(status == COMPLETED for status in run.status.values())
    assert not set(run.reached) & run.missed, "a missed point is never reached"
    for task_id, dependencies in run.tasks:
        # A task left pending waits on something not done: a failed task or a missed point upstream.
        if run.status[task_id] == PENDING:
            assert not all(run.done(d) for d in dependencies), task_id
    for task_id, _ in run.tasks:
        # Started once per scheduling: the first, if it ever could, and once per retry.
        first = 1 if task_id in run.taken else 0
        assert run.taken.count(task_id) == first + run.retries.get(task_id, 0), task_id


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_a_retried_task_goes_on_as_if_it_had_not_failed(
    dag: tuple[list[Node], list[Node]], data: st.DataObject
) -> None:
    # Every failure retried at once: the run ends as one without failures.
    run = Run(*dag)
    running: list[str] = []
    while True:
        running += run.take()
        if not running:
            break
        task_id = running.pop(data.draw(st.integers(0, len(running) - 1)))
        if data.draw(st.booleans(), label="fails first"):
            run.fail(task_id)
            run.retry(task_id)
        else:
            run.complete(task_id)
    assert set(run.status.values()) == {COMPLETED}
    assert sorted(run.reached) == sorted(point for point, _ in run.points)


@settings(max_examples=300, deadline=None)
@given(dags(), st.data())
def test_a_resumed_run_starts_where_the_previous_one_stopped(
    dag: tuple[list[Node], list[Node]], data: st.DataObject
) -> None:
    # A run stopped anywhere (continue-as-new, or a failed execution reopened): a new machine told
    # what was completed and reached makes ready exactly what the first would start next (running
    # tasks start again), reaches no point twice, and finishes the DAG. A point missed before stays
    # unreached (a new run is not told of misses): what depends on it waits.
    first = Run(*dag)
    running: list[str] = []
    for _ in range(data.draw(st.integers(0, 2 * len(first.tasks)), label="steps before the stop")):
        running += first.take()
        if data.draw(st.booleans(), label="miss a point now"):
            open_points = [p for p, _ in first.points if p not in first.reached and p not in first.missed]
            if open_points:
                first.miss(data.draw(st.sampled_from(open_points), label="point missed"))
        if not running:
            break
        first.complete(running.pop(data.draw(st.integers(0, len(running) - 1))))
    second = Run(*dag)
    second.status = {t: COMPLETED if s == COMPLETED else PENDING for t, s in first.status.items()}
    second.reached = list(first.reached)
    second.dag = DagMachine(second.tasks, second.points)
    completed = {task_id: COMPLETED for task_id, state in second.status.items() if state == COMPLETED}
    second.dag.restore(completed, first.reached)
    second.dag.start_ready()
    assert second.dag.completed == len(completed)
    drive(second, data, failures=False, misses=False)  # asserts each pass against the oracle
    assert len(set(second.reached)) == len(second.reached)
    if not first.missed:
        assert set(second.status.values()) == {COMPLETED}
        assert sorted(second.reached) == sorted(point for point, _ in second.points)


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_nothing_starts_once_halted_and_every_task_ends_in_one_state(
    dag: tuple[list[Node], list[Node]], data: st.DataObject
) -> None:
    # Halted part-way (the execution failed): running tasks still end, one state each, and
    # nothing else is ever made ready, whatever completes afterwards.
    run = Run(*dag)
    running: list[str] = []
    for _ in range(data.draw(st.integers(0, len(run.tasks)), label="steps before the halt")):
        running += run.take()
        if not running:
            break
        run.complete(running.pop(data.draw(st.integers(0, len(running) - 1))))
    running += run.take()
    run.dag.halt()
    while running:
        task_id = running.pop(data.draw(st.integers(0, len(running) - 1)))
        outcome = data.draw(st.sampled_from([COMPLETED, FAILED, CANCELLED]), label="ends as")
        if outcome == COMPLETED:
            run.dag.node_done(task_id)
        elif outcome == FAILED:
            run.dag.failed(task_id)
            run.dag.retried(task_id)  # a retry racing the failure starts nothing either
        else:
            run.dag.cancelled(task_id)
        assert run.dag.take_ready() == []
    assert run.dag.settled()
    assert STARTED not in run.dag.status.values()


def test_a_move_the_rules_do_not_allow_is_refused() -> None:
    dag = DagMachine([("a", []), ("b", ["a"])], [])
    with pytest.raises(DagError, match="task a is PENDING: it cannot become COMPLETED"):
        dag.node_done("a")
    dag.started("a")
    with pytest.raises(DagError, match="cannot become STARTED"):
        dag.started("a")
    dag.failed("a")
    with pytest.raises(DagError):
        dag.cancelled("a")
    with pytest.raises(DagError, match="cannot resume as CANCELLED"):
        DagMachine([("a", [])], []).restore({"a": CANCELLED}, [])


def test_a_resumed_wait_goes_on_and_a_failed_task_stays_failed() -> None:
    # A continued run: an approval still waiting is STARTED (it ends in this run); a failed task
    # holds back what depends on it until it is retried.
    dag = DagMachine([("a", []), ("b", []), ("c", ["a"]), ("d", ["b"])], [])
    dag.restore({"a": STARTED, "b": FAILED}, [])
    dag.start_ready()
    assert dag.take_ready() == [] and not dag.settled()
    assert dag.node_done("a") == []
    assert dag.take_ready() == ["c"]
    dag.retried("b")
    assert dag.take_ready() == ["b"]
    assert dag.failed_tasks() == []


def test_a_deferred_task_is_taken_again_in_definition_order() -> None:
    # Tasks that did not fit into one workflow task go back, and come first in the next pass.
    run = Run([("a", []), ("b", []), ("c", [])], [])
    ready = run.dag.take_ready()
    run.dag.defer(ready[1:])
    assert run.dag.take_ready() == ["b", "c"]
