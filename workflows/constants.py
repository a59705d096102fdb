"""Names shared by the engine, the API, the worker and the dev launcher.

Kept free of imports so workflow code, the launcher and the API can all use it.
"""

from __future__ import annotations

#: Queue of the interpreter workflow and the system activities that need the database.
SYSTEM_TASK_QUEUE = "wfo-system"
#: Default queue of user task activities; a task's resourceRequirements.queue overrides it.
DEFAULT_TASK_QUEUE = "wfo-tasks"

#: Temporal workflow id of an execution: readable in the Web UI and unique per execution.
WORKFLOW_ID_FORMAT = "wfo-{definition_id}-{execution_id}"

#: Custom search attributes (name -> Temporal type) registered on the dev server at start,
#: so operators can find executions with `temporal workflow list --query`.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "WfoDefinitionId": "Keyword",
    "WfoDefinitionVersion": "Keyword",
    "WfoExecutionId": "Keyword",
}


def workflow_id(definition_id: str, execution_id: str) -> str:
    return WORKFLOW_ID_FORMAT.format(definition_id=definition_id, execution_id=execution_id)
