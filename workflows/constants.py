"""Names shared by the engine, the API, the worker and the dev launcher.

Kept free of imports so workflow code, the launcher and the API can all use it.
"""

from __future__ import annotations

#: Queue of the interpreter workflow and the system activities that need the database.
SYSTEM_TASK_QUEUE = "wfo-system"
#: Default queue of user task activities; a task's resourceRequirements.queue overrides it.
DEFAULT_TASK_QUEUE = "wfo-tasks"

#: Error types of a task attempt that landed on a worker without the task's code: a `python`
#: function or a task type it has not loaded. Temporal routes by queue, not by function, so
#: another worker of the queue may have it: retried, and a blocker while it goes on.
UNKNOWN_FUNCTION = "UnknownFunction"
UNKNOWN_TASK_TYPE = "UnknownTaskType"
MISSING_CODE_ERRORS = (UNKNOWN_FUNCTION, UNKNOWN_TASK_TYPE)

#: Workflow type of the generic interpreter.
INTERPRETER_WORKFLOW = "Interpreter"
#: System (local) activities of the interpreter, served by workers of the system queue.
PUBLISH_ACTIVITY = "wfo.publish_events"
INSPECT_ACTIVITY = "wfo.inspect_tasks"

#: Webhook deliveries: one workflow per delivery round, on the webhook queue.
DELIVERY_WORKFLOW = "WebhookDelivery"
DELIVER_ACTIVITY = "wfo.deliver_webhook"
GIVE_UP_ACTIVITY = "wfo.give_up_delivery"
#: Delivery failures that retrying cannot fix (410 Gone, the webhook deactivated, a refused URL).
FINAL_DELIVERY_ERRORS = ("WebhookGone", "WebhookInactive", "DestinationRefused")

#: The reconciler: a Temporal Schedule starts a small workflow on the system queue that runs one
#: pass (an activity) comparing unfinished executions with Temporal.
RECONCILER_WORKFLOW = "Reconciler"
RECONCILE_ACTIVITY = "wfo.reconcile_executions"
RECONCILER_SCHEDULE_FORMAT = "{prefix}-reconciler"

#: Temporal workflow id of an execution: readable in the Web UI and unique per execution.
WORKFLOW_ID_FORMAT = "{prefix}-{definition_id}-{execution_id}"

#: Custom search attributes (name -> Temporal type) registered on the dev server at start,
#: so operators can find executions with `temporal workflow list --query`.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "WfoDefinitionId": "Keyword",
    "WfoDefinitionVersion": "Keyword",
    "WfoExecutionId": "Keyword",
}


def workflow_id(prefix: str, definition_id: str, execution_id: str) -> str:
    return WORKFLOW_ID_FORMAT.format(prefix=prefix, definition_id=definition_id, execution_id=execution_id)


def reconciler_schedule_id(prefix: str) -> str:
    return RECONCILER_SCHEDULE_FORMAT.format(prefix=prefix)


def activity_id(task_id: str, attempts_before: int) -> str:
    """One activity id per scheduling of a task: `<task id>#<its first attempt number>`."""
    return f"{task_id}#{attempts_before + 1}"


def task_of_activity(activity_id: str) -> str:
    return activity_id.rpartition("#")[0]
