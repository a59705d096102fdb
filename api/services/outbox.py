"""The webhook outbox: each published event becomes one delivery per subscribed webhook, written
in the same transaction as the event, with the body every attempt will send."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.models.base import format_timestamp
from api.models.executions import BlockerRow, ExecutionEventRow, ExecutionRow, TaskExecutionRow, event_time
from api.models.webhooks import ALL_EVENTS, WEBHOOK_EVENTS, WebhookDeliveryRow, WebhookRow
from workflows.inputs import Event

_PUBLIC = frozenset(WEBHOOK_EVENTS)


def new_message_id() -> str:
    """The webhook-id of a delivery: the same on every attempt, so receivers can de-duplicate."""
    return "msg_" + uuid.uuid4().hex


async def queue_deliveries(
    session: AsyncSession,
    execution: ExecutionRow,
    written: Sequence[tuple[Event, ExecutionEventRow]],
    tasks: Mapping[str, TaskExecutionRow],
    blockers: Mapping[str, BlockerRow],
) -> int:
    """Add the deliveries of these events; returns how many."""
    public = [(event, row) for event, row in written if event.type in _PUBLIC]
    if not public:
        return 0
    webhooks = list(
        await session.exec(
            select(WebhookRow.id, WebhookRow.events).where(
                col(WebhookRow.active).is_(True), col(WebhookRow.deleted_at).is_(None)
            )
        )
    )
    if not webhooks:
        return 0
    await session.flush()  # ids of the event, task and blocker rows
    count = 0
    for event, row in public:
        targets = [webhook_id for webhook_id, events in webhooks if ALL_EVENTS in events or event.type in events]
        if not targets:
            continue
        data = {
            "executionId": str(execution.id),
            "workflowDefinitionId": str(execution.definition_id),
            "sequence": event.seq,
            **await _snapshot(session, execution, event, tasks, blockers),
        }
        for webhook_id in targets:
            message_id = new_message_id()
            session.add(
                WebhookDeliveryRow(
                    webhook_id=webhook_id,
                    event_id=row.id,
                    event_type=event.type,
                    message_id=message_id,
                    payload={"id": message_id, "type": event.type, "createdAt": format_timestamp(event.at), "data": data},
                    created_at=event.at,
                )
            )
            count += 1
    return count


async def _snapshot(
    session: AsyncSession,
    execution: ExecutionRow,
    event: Event,
    tasks: Mapping[str, TaskExecutionRow],
    blockers: Mapping[str, BlockerRow],
) -> dict[str, Any]:
    """What the event is about, as it was at that moment (the rows may have moved on since)."""
    data = event.data
    kind = event.type
    if kind.startswith("workflow.execution."):
        return {
            "execution": {
                "id": str(execution.id),
                "workflowDefinitionId": str(execution.definition_id),
                "workflowDefinitionVersion": execution.definition_version,
                "status": data["status"],
                "startTime": _time(data.get("startTime")),
                "endTime": _time(data.get("endTime")),
                "error": data.get("error"),
            }
        }
    if kind.startswith("task.execution."):
        row = tasks.get(data["taskId"])
        return {
            "task": {
                "id": str(row.id) if row is not None else None,
                "taskDefinitionId": data["taskId"],
                "name": data.get("name"),
                "type": data.get("type"),
                "status": data["status"],
                "startTime": _time(data.get("startTime")),
                "endTime": _time(data.get("endTime")),
                "attempts": data.get("attempts"),
                "error": data.get("error"),
                "resources": data.get("resources"),
                **({"result": data.get("result")} if kind == "task.execution.completed" else {}),
            }
        }
    if kind.startswith("synchronization.point."):
        return {
            "synchronizationPoint": {
                "id": data["syncPointId"],
                "name": data.get("name"),
                "at": _time(data.get("at")),
                "error": data.get("error"),
            }
        }
    if kind == "milestone.achieved":
        return {
            "milestone": {
                "key": data["key"],
                "name": data["name"],
                "description": data.get("description"),
                "achieved": True,
                "achievedAt": _time(data.get("achievedAt")),
            }
        }
    if kind.startswith("blocker."):
        blocker = blockers.get(data["key"])
        blocker_id = blocker.id if blocker is not None else await _blocker_id(session, execution, data["key"])
        task = tasks.get(data.get("taskId") or "")
        return {
            "blocker": {
                "id": str(blocker_id) if blocker_id is not None else None,
                "taskExecutionId": str(task.id) if task is not None else None,
                "kind": data.get("kind"),
                "description": data.get("description"),
                "createdAt": _time(data.get("createdAt")),
                "resolvedAt": _time(data.get("resolvedAt")),
            }
        }
    if kind == "progress.updated":
        return {"progress": {"completedTasks": data["completedTasks"], "totalTasks": data["totalTasks"]}}
    return {}


async def _blocker_id(session: AsyncSession, execution: ExecutionRow, key: str) -> int | None:
    return (
        await session.exec(
            select(BlockerRow.id)
            .where(BlockerRow.execution_id == execution.id, BlockerRow.key == key)
            .order_by(col(BlockerRow.id).desc())
        )
    ).first()


def _time(value: Any) -> str | None:
    """Event times (datetimes or ISO text) as the API writes them."""
    if value is None:
        return None
    parsed = event_time(value)
    return format_timestamp(parsed) if parsed is not None else None
