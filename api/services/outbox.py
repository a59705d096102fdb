"""The webhook outbox: each published event becomes one delivery per subscribed webhook, written
in the same transaction as the event, with the body every attempt will send."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from api.models.base import format_timestamp
from api.models.executions import BlockerRow, event_time
from api.models.users import Role, UserRow
from api.models.webhooks import ALL_EVENTS, WEBHOOK_EVENTS, DeliveryStatus, WebhookDeliveryRow, WebhookRow
from workflows.inputs import Event

_PUBLIC = frozenset(WEBHOOK_EVENTS)
#: The role registering a webhook needs (REST and GraphQL): an owner who lost it, or was
#: disabled, gets no more deliveries (events carry task results).
WEBHOOK_ROLE = Role.OPERATOR
OWNER_ROLES = tuple(role.value for role in Role if role.allows(WEBHOOK_ROLE))


def new_message_id() -> str:
    """The webhook-id of a delivery: the same on every attempt, so receivers can de-duplicate."""
    return "msg_" + uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class ExecutionRef:
    """What a delivery says about its execution."""

    id: int
    definition_id: int
    definition_version: str


_webhooks = WebhookRow.__table__  # type: ignore[attr-defined]
_deliveries = WebhookDeliveryRow.__table__  # type: ignore[attr-defined]
_blockers = BlockerRow.__table__  # type: ignore[attr-defined]
_users = UserRow.__table__  # type: ignore[attr-defined]


def owner_refusal(owner: UserRow | None) -> str | None:
    """Why a webhook's owner may no longer receive its deliveries (None: they may)."""
    if owner is None:
        return "the webhook's owner no longer exists"
    if not owner.active:
        return f"the webhook's owner {owner.username!r} is disabled"
    if owner.role not in OWNER_ROLES:
        return f"the webhook's owner {owner.username!r} no longer has the {WEBHOOK_ROLE.value} role"
    return None


def subscribed_webhooks(conn: sa.Connection, events: Sequence[Event]) -> list[tuple[int, list[str]]]:
    """Active webhooks (id, events they want) whose owner is active and may still register
    webhooks (see `owner_refusal`), if any of these events is one webhooks receive."""
    if not any(event.type in _PUBLIC for event in events):
        return []
    rows = conn.execute(
        sa.select(_webhooks.c.id, _webhooks.c.events)
        .join(_users, _users.c.id == _webhooks.c.created_by)
        .where(
            _webhooks.c.active.is_(True),
            _webhooks.c.deleted_at.is_(None),
            _users.c.active.is_(True),
            _users.c.role.in_(OWNER_ROLES),
        )
    )
    return [(webhook_id, list(wanted)) for webhook_id, wanted in rows]


def queue_deliveries(
    conn: sa.Connection,
    execution: ExecutionRef,
    webhooks: Sequence[tuple[int, list[str]]],
    written: Sequence[tuple[Event, int]],
    task_ids: Mapping[str, int],
    blocker_ids: Mapping[str, int],
) -> int:
    """Add the deliveries of these events (each with its event row id); returns how many."""
    deliveries = []
    for event, event_id in written:
        if event.type not in _PUBLIC:
            continue
        targets = [
            webhook_id for webhook_id, events in webhooks if ALL_EVENTS in events or event.type in events
        ]
        if not targets:
            continue
        data = {
            "executionId": str(execution.id),
            "workflowDefinitionId": str(execution.definition_id),
            "sequence": event.seq,
            **_snapshot(conn, execution, event, task_ids, blocker_ids),
        }
        for webhook_id in targets:
            message_id = new_message_id()
            deliveries.append(
                {
                    "webhook_id": webhook_id,
                    "event_id": event_id,
                    "event_type": event.type,
                    "message_id": message_id,
                    "payload": {
                        "id": message_id,
                        "type": event.type,
                        "createdAt": format_timestamp(event.at),
                        "data": data,
                    },
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": 0,
                    "dispatched": False,
                    "redeliveries": 0,
                    "created_at": event.at,
                }
            )
    if deliveries:
        conn.execute(sa.insert(_deliveries), deliveries)
    return len(deliveries)


def _snapshot(
    conn: sa.Connection,
    execution: ExecutionRef,
    event: Event,
    task_ids: Mapping[str, int],
    blocker_ids: Mapping[str, int],
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
        task_row_id = task_ids.get(data["taskId"])
        return {
            "task": {
                "id": str(task_row_id) if task_row_id is not None else None,
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
        blocker_id = blocker_ids.get(data["key"])
        if blocker_id is None:
            blocker_id = conn.execute(
                sa.select(_blockers.c.id)
                .where(_blockers.c.execution_id == execution.id, _blockers.c.key == data["key"])
                .order_by(_blockers.c.id.desc())
                .limit(1)
            ).scalar()
        task_row_id = task_ids.get(data.get("taskId") or "")
        return {
            "blocker": {
                "id": str(blocker_id) if blocker_id is not None else None,
                "taskExecutionId": str(task_row_id) if task_row_id is not None else None,
                "kind": data.get("kind"),
                "description": data.get("description"),
                "createdAt": _time(data.get("createdAt")),
                "resolvedAt": _time(data.get("resolvedAt")),
            }
        }
    if kind == "progress.updated":
        return {"progress": {"completedTasks": data["completedTasks"], "totalTasks": data["totalTasks"]}}
    return {}


def _time(value: Any) -> str | None:
    """Event times (datetimes or ISO text) as the API writes them."""
    if value is None:
        return None
    parsed = event_time(value)
    return format_timestamp(parsed) if parsed is not None else None
