"""The reconciler's activity (queue wfo-system): one pass over the executions the read model shows
unfinished, run by workflows/reconciler.py on the reconciler's schedule."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client

from api.db import SessionFactory
from api.services.reconciler import Reconciler
from api.settings import Settings
from workflows.constants import RECONCILE_ACTIVITY
from workflows.reconciler import ReconcileInput, ReconcileReport


class ReconcileActivities:
    """Built once in worker.py (system workers) with a session factory, a Temporal client and the settings."""

    def __init__(self, sessions: SessionFactory, client: Client, settings: Settings) -> None:
        self.sessions = sessions
        self.client = client
        self.settings = settings

    @activity.defn(name=RECONCILE_ACTIVITY)
    async def reconcile_executions(self, input: ReconcileInput) -> ReconcileReport:
        """Compare every unfinished execution with Temporal and repair those Temporal ended (idempotent:
        a repair re-checks the read model under the execution's row lock)."""
        async with self.sessions() as session:
            report = await Reconciler(session, self.settings, self.client).run_pass(
                heartbeat=activity.heartbeat
            )
        return ReconcileReport(report.examined, report.repaired, report.backlog, report.unchecked)

    def activities(self) -> list[object]:
        return [self.reconcile_executions]
