"""The reconciler's workflow: one pass, started by a Temporal Schedule on the system queue.

The schedule (created by system workers at start, see api/services/reconciler.py) runs it every
WFO_RECONCILE_INTERVAL_SECONDS and skips a tick while a pass still runs, so there is one pass at a
time however many workers there are; each pass shows in the Web UI as a run of this workflow.
The pass itself is an activity: it reads the database and asks Temporal, which a workflow must not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.constants import RECONCILE_ACTIVITY, RECONCILER_WORKFLOW

#: One pass over every unfinished execution; it heartbeats between batches of executions.
PASS_TIMEOUT = timedelta(minutes=15)
PASS_HEARTBEAT_TIMEOUT = timedelta(minutes=2)


# These cross into Temporal (the schedule stores the input); like workflows/inputs.py: add fields
# with defaults, never remove or rename one.
@dataclass
class ReconcileInput:
    """What a pass looks at: every execution the read model shows unfinished (no options yet)."""


@dataclass
class ReconcileReport:
    """What a pass found: executions compared, repaired, still diverging, not answered for."""

    examined: int = 0
    repaired: int = 0
    backlog: int = 0
    unchecked: int = 0


@workflow.defn(name=RECONCILER_WORKFLOW)
class ReconcilerWorkflow:
    """One reconciliation pass: compares the executions the read model shows unfinished with Temporal
    and repairs the read model where Temporal ended a run without its last publish."""

    @workflow.run
    async def run(self, input: ReconcileInput) -> ReconcileReport:
        return await workflow.execute_activity(
            RECONCILE_ACTIVITY,
            input,
            result_type=ReconcileReport,
            start_to_close_timeout=PASS_TIMEOUT,
            heartbeat_timeout=PASS_HEARTBEAT_TIMEOUT,
            # A few attempts, then the pass fails visibly: the next tick starts a fresh one anyway.
            retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=5)),
            summary="reconcile unfinished executions",
        )
