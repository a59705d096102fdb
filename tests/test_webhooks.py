"""Webhook registrations over REST and GraphQL: the API reference's bodies and shapes, validation,
secrets shown once, who sees what, the SSRF guard at registration, and POST /api/webhooks/test
against real receivers on loopback. SQLite and PostgreSQL; no Temporal needed (deliveries, which
run on Temporal, are in test_webhook_delivery.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from activities.netguard import configure_network
from api.settings import Settings
from tests.conftest import create_user, free_port, problem
from tests.graphql_client import data_of, error_of, gql
from tests.loopback import RecordedRequest, Reply
from tests.webhook_support import EVENTS, SPEC_SECRET, register, verify_signature

MASK = "********"
V1_KEYS = {"id", "url", "events", "secret", "active", "createdAt"}
V2_KEYS = V1_KEYS | {"deactivatedReason", "lastSuccessAt", "updatedAt"}

SPEC_REGISTER = {
    "url": "https://example.com/webhook",
    "events": ["workflow.execution.completed", "task.execution.failed"],
    "secret": "webhook-secret",
}
SPEC_UPDATE = {
    "url": "https://example.com/updated-webhook",
    "events": ["workflow.execution.completed", "task.execution.failed", "workflow.execution.started"],
    "active": True,
}
SPEC_TEST = {
    "url": "https://example.com/webhook",
    "event": "workflow.execution.completed",
    "payload": {"id": "1", "status": "COMPLETED"},
    "secret": "webhook-secret",
}

REGISTER_WEBHOOK = """
mutation RegisterWebhook($input: RegisterWebhookInput!) {
  registerWebhook(input: $input) {
    id
    url
    events
    secret
    active
    createdAt
  }
}
"""
WEBHOOK_FIELDS = "id url events secret active createdAt deactivatedReason lastSuccessAt"


def is_timestamp(value: str) -> bool:
    return isinstance(value, str) and value.endswith("Z") and "T" in value


async def stored_secret(app, webhook_id: str) -> str | None:
    async with app.state.engine.connect() as conn:
        return (
            await conn.execute(sa.text("SELECT secret FROM webhooks WHERE id = :i"), {"i": int(webhook_id)})
        ).scalar_one()


async def count_webhooks(app) -> int:
    async with app.state.engine.connect() as conn:
        return (await conn.execute(sa.text("SELECT count(*) FROM webhooks"))).scalar_one()


# --- REST: the API reference ---------------------------------------------------------------------


class TestRegisterWebhook:
    async def test_spec_example(self, client, operator):
        """The reference's body, as written: example.com does not resolve here (offline), and an
        unresolvable name is accepted at registration."""
        response = await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == V1_KEYS
        assert body["id"] == "1" and isinstance(body["id"], str)
        assert body["url"] == SPEC_REGISTER["url"]
        assert body["events"] == SPEC_REGISTER["events"]
        assert body["secret"] == "webhook-secret"  # in the creation answer only
        assert body["active"] is True
        assert is_timestamp(body["createdAt"])

    async def test_v2_answer_has_the_extensions(self, client, operator):
        body = (await client.post("/api/v2/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        assert set(body) == V2_KEYS
        assert body["secret"] == "webhook-secret"
        assert body["deactivatedReason"] is None and body["lastSuccessAt"] is None
        assert is_timestamp(body["updatedAt"])

    async def test_secret_is_generated_when_absent(self, client, operator):
        """A generated secret is a Standard Webhooks `whsec_` secret: base64 of a 32-byte key."""
        body = (
            await client.post(
                "/api/webhooks", json={"url": "https://example.com/h", "events": ["*"]}, headers=operator
            )
        ).json()
        assert body["secret"].startswith("whsec_")
        assert len(base64.b64decode(body["secret"].removeprefix("whsec_"), validate=True)) == 32
        other = (
            await client.post(
                "/api/webhooks", json={"url": "https://example.com/h", "events": ["*"]}, headers=operator
            )
        ).json()
        assert other["secret"] != body["secret"]

    async def test_all_events_and_star_are_accepted(self, client, operator):
        body = (
            await client.post(
                "/api/webhooks",
                json={"url": "http://example.com/h", "events": list(EVENTS), "secret": "x" * 12},
                headers=operator,
            )
        ).json()
        assert body["events"] == list(EVENTS)
        star = (
            await client.post(
                "/api/webhooks", json={"url": "http://example.com/h", "events": ["*"]}, headers=operator
            )
        ).json()
        assert star["events"] == ["*"]

    async def test_inactive_at_creation(self, client, operator):
        body = (
            await client.post("/api/v2/webhooks", json={**SPEC_REGISTER, "active": False}, headers=operator)
        ).json()
        assert body["active"] is False

    async def test_viewer_cannot_register(self, app, client, viewer):
        body = problem(await client.post("/api/webhooks", json=SPEC_REGISTER, headers=viewer), 403)
        assert "operator" in body["detail"].lower() or "role" in body["detail"].lower(), body
        assert await count_webhooks(app) == 0

    async def test_anonymous_is_401(self, client):
        response = await client.post("/api/webhooks", json=SPEC_REGISTER)
        problem(response, 401)
        problem(await client.get("/api/webhooks"), 401)

    INVALID: ClassVar[list[tuple[dict[str, Any], str, str]]] = [
        ({"url": "ftp://example.com/hook"}, "#/url", "only http and https"),
        ({"url": "file:///etc/passwd"}, "#/url", "only http and https"),
        ({"url": "javascript:alert(1)"}, "#/url", "only http and https"),
        ({"url": "example.com/webhook"}, "#/url", "only http and https"),
        ({"url": "http://"}, "#/url", "no host"),
        ({"url": "http://[::1/x"}, "#/url", "not a valid URL"),
        ({"url": ""}, "#/url", "at least 1 character"),
        ({"url": "https://example.com/" + "a" * 2100}, "#/url", "2048"),
        ({"url": None}, "#/url", "string"),
        (
            {"events": ["workflow.execution.exploded"]},
            "#/events",
            "unknown event 'workflow.execution.exploded'",
        ),
        ({"events": ["WORKFLOW.EXECUTION.COMPLETED"]}, "#/events", "unknown event"),
        ({"events": ["task.execution.pending"]}, "#/events", "unknown event"),  # internal, not public
        ({"events": []}, "#/events", "at least 1"),
        ({"events": "workflow.execution.completed"}, "#/events", "list"),
        ({"secret": "x" * 11}, "#/secret", "12"),
        ({"secret": ""}, "#/secret", "12"),
        ({"secret": "x" * 300}, "#/secret", "256"),
        ({"extra": True}, "#/extra", "Unknown field"),
    ]

    async def test_invalid_registration_is_422_naming_the_problem(self, app, client, operator):
        for change, pointer, fragment in self.INVALID:
            response = await client.post("/api/webhooks", json={**SPEC_REGISTER, **change}, headers=operator)
            body = problem(response, 422)
            problems = {e["pointer"]: e["detail"] for e in body["errors"]}
            assert pointer in problems and fragment in problems[pointer], (change, body)
        assert await count_webhooks(app) == 0

    async def test_unknown_event_message_lists_the_known_ones(self, client, operator):
        body = problem(
            await client.post("/api/webhooks", json={**SPEC_REGISTER, "events": ["nope"]}, headers=operator),
            422,
        )
        detail = body["errors"][0]["detail"]
        assert all(name in detail for name in EVENTS) and "'*'" in detail

    async def test_secret_of_exactly_twelve_characters_is_enough(self, client, operator):
        response = await client.post(
            "/api/webhooks", json={**SPEC_REGISTER, "secret": "a" * 12}, headers=operator
        )
        assert response.status_code == 201, response.text

    async def test_every_problem_is_listed_at_once(self, client, operator):
        body = problem(
            await client.post(
                "/api/webhooks",
                json={"url": "ftp://example.com/x", "events": ["nope"], "secret": "short"},
                headers=operator,
            ),
            422,
        )
        assert {e["pointer"] for e in body["errors"]} == {"#/url", "#/events", "#/secret"}

    async def test_openapi_lists_the_event_names(self, client):
        schema = (await client.get("/openapi.json")).json()
        operation = schema["paths"]["/api/webhooks"]["post"]
        text = json.dumps(operation)
        assert all(f"`{name}`" in text for name in EVENTS), operation.get("description")
        assert "`*`" in text
        assert {"get", "post"} <= set(schema["paths"]["/api/webhooks"])
        assert {"put", "delete", "get"} <= set(schema["paths"]["/api/webhooks/{webhook_id}"])
        assert "post" in schema["paths"]["/api/webhooks/test"]
        assert "get" in schema["paths"]["/api/webhooks/{webhook_id}/deliveries"]
        assert "post" in schema["paths"]["/api/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"]


class TestListAndGetWebhooks:
    async def test_spec_list_shape_with_masked_secrets(self, client, operator):
        created = [
            (
                await client.post(
                    "/api/webhooks",
                    json={**SPEC_REGISTER, "url": f"https://example.com/{i}"},
                    headers=operator,
                )
            ).json()
            for i in range(3)
        ]
        response = await client.get("/api/webhooks", headers=operator)
        assert response.status_code == 200
        listed = response.json()
        assert isinstance(listed, list) and len(listed) == 3
        assert [w["id"] for w in listed] == [c["id"] for c in created]
        for item, original in zip(listed, created, strict=True):
            assert set(item) == V1_KEYS
            assert item["secret"] == MASK
            assert {k: v for k, v in item.items() if k != "secret"} == {
                k: v for k, v in original.items() if k != "secret"
            }
        assert SPEC_SECRET not in response.text

    async def test_v2_list_is_a_page(self, client, operator):
        for i in range(3):
            await client.post(
                "/api/webhooks", json={**SPEC_REGISTER, "url": f"https://example.com/{i}"}, headers=operator
            )
        page = (
            await client.get("/api/v2/webhooks", params={"limit": 2, "offset": 1}, headers=operator)
        ).json()
        assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 1
        assert [w["url"] for w in page["items"]] == ["https://example.com/1", "https://example.com/2"]
        assert all(set(w) == V2_KEYS and w["secret"] == MASK for w in page["items"])
        problem(await client.get("/api/webhooks", params={"limit": 0}, headers=operator), 422)
        problem(await client.get("/api/webhooks", params={"offset": -1}, headers=operator), 422)

    async def test_get_masks_the_secret(self, client, operator):
        created = (await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        response = await client.get(f"/api/webhooks/{created['id']}", headers=operator)
        assert response.status_code == 200
        assert response.json() == {**created, "secret": MASK}
        assert SPEC_SECRET not in response.text
        v2 = (await client.get(f"/api/v2/webhooks/{created['id']}", headers=operator)).json()
        assert v2["secret"] == MASK and set(v2) == V2_KEYS

    async def test_unknown_webhook_is_404(self, client, operator):
        for webhook_id in ("999", "abc", "0", "-1", "1.5"):
            body = problem(await client.get(f"/api/webhooks/{webhook_id}", headers=operator), 404)
            assert body["detail"] == f"Webhook '{webhook_id}' does not exist.", body


class TestUpdateWebhook:
    async def test_spec_example(self, app, client, operator):
        created = (await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        response = await client.put(f"/api/webhooks/{created['id']}", json=SPEC_UPDATE, headers=operator)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == V1_KEYS
        assert body == {**created, "url": SPEC_UPDATE["url"], "events": SPEC_UPDATE["events"], "secret": MASK}
        assert (await client.get(f"/api/webhooks/{created['id']}", headers=operator)).json() == body
        assert await stored_secret(app, created["id"]) == SPEC_SECRET  # not given: unchanged

    async def test_putting_back_what_get_returned_changes_nothing(self, app, client, operator):
        """A client that PUTs back a GET answer sends the mask as the secret: that is no change."""
        created = (await client.post("/api/v2/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        got = (await client.get(f"/api/webhooks/{created['id']}", headers=operator)).json()
        assert got["secret"] == MASK
        response = await client.put(f"/api/webhooks/{created['id']}", json=got, headers=operator)
        assert response.status_code == 200, response.text
        assert response.json() == got
        assert await stored_secret(app, created["id"]) == SPEC_SECRET
        only_mask = await client.put(
            f"/api/webhooks/{created['id']}",
            json={"url": got["url"], "events": got["events"], "secret": MASK},
            headers=operator,
        )
        assert only_mask.status_code == 200 and only_mask.json()["secret"] == MASK
        assert await stored_secret(app, created["id"]) == SPEC_SECRET

    async def test_new_secret_is_stored_and_not_shown(self, app, client, operator):
        created = (await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        response = await client.put(
            f"/api/webhooks/{created['id']}",
            json={**SPEC_UPDATE, "secret": "a-brand-new-secret"},
            headers=operator,
        )
        assert response.status_code == 200 and response.json()["secret"] == MASK
        assert "a-brand-new-secret" not in response.text
        assert await stored_secret(app, created["id"]) == "a-brand-new-secret"
        problem(
            await client.put(
                f"/api/webhooks/{created['id']}", json={**SPEC_UPDATE, "secret": "short"}, headers=operator
            ),
            422,
        )
        assert await stored_secret(app, created["id"]) == "a-brand-new-secret"

    async def test_deactivate_and_reactivate(self, client, operator):
        created = (await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        off = (
            await client.put(
                f"/api/v2/webhooks/{created['id']}", json={**SPEC_UPDATE, "active": False}, headers=operator
            )
        ).json()
        assert off["active"] is False and off["deactivatedReason"] == "deactivated by olivia"
        on = (
            await client.put(f"/api/v2/webhooks/{created['id']}", json=SPEC_UPDATE, headers=operator)
        ).json()
        assert on["active"] is True and on["deactivatedReason"] is None

    async def test_invalid_update_is_422_and_changes_nothing(self, client, operator):
        created = (await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        for body, pointer in (
            ({**SPEC_UPDATE, "events": ["nope"]}, "#/events"),
            ({**SPEC_UPDATE, "url": "gopher://example.com"}, "#/url"),
            ({"events": ["*"]}, "#/url"),
        ):
            result = problem(
                await client.put(f"/api/webhooks/{created['id']}", json=body, headers=operator), 422
            )
            assert pointer in {e["pointer"] for e in result["errors"]}, result
        assert (await client.get(f"/api/webhooks/{created['id']}", headers=operator)).json() == {
            **created,
            "secret": MASK,
        }

    async def test_unknown_webhook_is_404(self, client, operator):
        problem(await client.put("/api/webhooks/42", json=SPEC_UPDATE, headers=operator), 404)


class TestDeleteWebhook:
    async def test_204_then_gone(self, client, operator):
        created = (await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        kept = (
            await client.post(
                "/api/webhooks", json={**SPEC_REGISTER, "url": "https://example.com/kept"}, headers=operator
            )
        ).json()
        response = await client.delete(f"/api/webhooks/{created['id']}", headers=operator)
        assert response.status_code == 204 and response.content == b""
        problem(await client.get(f"/api/webhooks/{created['id']}", headers=operator), 404)
        problem(await client.put(f"/api/webhooks/{created['id']}", json=SPEC_UPDATE, headers=operator), 404)
        problem(await client.delete(f"/api/webhooks/{created['id']}", headers=operator), 404)
        assert [w["id"] for w in (await client.get("/api/webhooks", headers=operator)).json()] == [kept["id"]]


class TestWhoSeesWhat:
    async def test_another_operator_gets_404_and_an_admin_sees_all(self, client, admin, operator):
        other = await create_user(client, admin, "oscar", "operator")
        mine = (await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        theirs = (
            await client.post(
                "/api/webhooks", json={**SPEC_REGISTER, "url": "https://example.com/oscar"}, headers=other
            )
        ).json()
        admins = (
            await client.post(
                "/api/webhooks", json={**SPEC_REGISTER, "url": "https://example.com/admin"}, headers=admin
            )
        ).json()

        assert [w["id"] for w in (await client.get("/api/webhooks", headers=operator)).json()] == [mine["id"]]
        assert [w["id"] for w in (await client.get("/api/webhooks", headers=other)).json()] == [theirs["id"]]
        assert (await client.get("/api/v2/webhooks", headers=other)).json()["total"] == 1
        assert [w["id"] for w in (await client.get("/api/webhooks", headers=admin)).json()] == [
            mine["id"],
            theirs["id"],
            admins["id"],
        ]

        for attempt in (
            client.get(f"/api/webhooks/{mine['id']}", headers=other),
            client.put(f"/api/webhooks/{mine['id']}", json=SPEC_UPDATE, headers=other),
            client.delete(f"/api/webhooks/{mine['id']}", headers=other),
            client.get(f"/api/webhooks/{mine['id']}/deliveries", headers=other),
            client.post(f"/api/webhooks/{mine['id']}/deliveries/1/redeliver", headers=other),
            client.get(f"/api/webhooks/{admins['id']}", headers=operator),
        ):
            body = problem(await attempt, 404)
            assert body["detail"] in (
                f"Webhook '{mine['id']}' does not exist.",
                f"Webhook '{admins['id']}' does not exist.",
            )
        # Nothing changed by the refused calls.
        assert (await client.get(f"/api/webhooks/{mine['id']}", headers=operator)).json() == {
            **mine,
            "secret": MASK,
        }

        # The admin sees, changes and deletes anyone's, secrets masked all the same.
        seen = (await client.get(f"/api/webhooks/{mine['id']}", headers=admin)).json()
        assert seen == {**mine, "secret": MASK}
        changed = await client.put(f"/api/webhooks/{theirs['id']}", json=SPEC_UPDATE, headers=admin)
        assert changed.status_code == 200 and changed.json()["url"] == SPEC_UPDATE["url"]
        assert (
            await client.get(f"/api/webhooks/{theirs['id']}/deliveries", headers=admin)
        ).status_code == 200
        assert (await client.delete(f"/api/webhooks/{theirs['id']}", headers=admin)).status_code == 204
        assert (await client.get("/api/webhooks", headers=other)).json() == []

    async def test_viewer_cannot_change_anything(self, client, operator, viewer):
        mine = (await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        problem(await client.post("/api/webhooks", json=SPEC_REGISTER, headers=viewer), 403)
        problem(await client.put(f"/api/webhooks/{mine['id']}", json=SPEC_UPDATE, headers=viewer), 403)
        problem(await client.delete(f"/api/webhooks/{mine['id']}", headers=viewer), 403)
        problem(await client.post("/api/webhooks/test", json=SPEC_TEST, headers=viewer), 403)
        # A viewer created none, so sees none, and the operator's is not found for them.
        assert (await client.get("/api/webhooks", headers=viewer)).json() == []
        problem(await client.get(f"/api/webhooks/{mine['id']}", headers=viewer), 404)


# --- GraphQL ------------------------------------------------------------------------------------


class TestGraphQL:
    async def test_register_webhook_spec_document(self, client, operator):
        result = data_of(await gql(client, REGISTER_WEBHOOK, {"input": SPEC_REGISTER}, operator))
        created = result["registerWebhook"]
        assert set(created) == V1_KEYS
        assert created["url"] == SPEC_REGISTER["url"] and created["events"] == SPEC_REGISTER["events"]
        assert created["secret"] == "webhook-secret" and created["active"] is True
        assert is_timestamp(created["createdAt"])
        # The same webhook over REST, secret masked from now on.
        rest = (await client.get(f"/api/webhooks/{created['id']}", headers=operator)).json()
        assert rest == {**created, "secret": MASK}

    async def test_queries_and_mutations(self, app, client, operator, loopback):
        loopback.route("/hook", method="POST", json={"ok": True})
        created = data_of(
            await gql(
                client,
                REGISTER_WEBHOOK,
                {"input": {"url": "https://example.com/a", "events": ["*"]}},
                operator,
            )
        )["registerWebhook"]
        assert created["secret"].startswith("whsec_")

        listed = data_of(
            await gql(
                client,
                f"{{ webhooks {{ total limit offset items {{ {WEBHOOK_FIELDS} }} }} }}",
                headers=operator,
            )
        )
        assert (
            listed["webhooks"]["total"] == 1
            and listed["webhooks"]["limit"] == 10
            and listed["webhooks"]["offset"] == 0
        )
        assert (
            listed["webhooks"]["items"][0]["secret"] == MASK
            and listed["webhooks"]["items"][0]["id"] == created["id"]
        )

        one = data_of(
            await gql(
                client,
                f"query($id: ID!) {{ webhook(id: $id) {{ {WEBHOOK_FIELDS} }} }}",
                {"id": created["id"]},
                operator,
            )
        )
        assert one["webhook"]["secret"] == MASK and one["webhook"]["deactivatedReason"] is None

        update = f"mutation($id: ID!, $input: UpdateWebhookInput!) {{ updateWebhook(id: $id, input: $input) {{ {WEBHOOK_FIELDS} }} }}"
        updated = data_of(
            await gql(
                client,
                update,
                {"id": created["id"], "input": {**SPEC_UPDATE, "active": False, "secret": MASK}},
                operator,
            )
        )
        assert (
            updated["updateWebhook"]["url"] == SPEC_UPDATE["url"]
            and updated["updateWebhook"]["active"] is False
        )
        assert (
            updated["updateWebhook"]["secret"] == MASK
            and updated["updateWebhook"]["deactivatedReason"] == "deactivated by olivia"
        )
        assert await stored_secret(app, created["id"]) == created["secret"]

        deliveries = data_of(
            await gql(
                client,
                "query($id: ID!) { webhookDeliveries(webhookId: $id) { total items { id status } } }",
                {"id": created["id"]},
                operator,
            )
        )
        assert deliveries["webhookDeliveries"] == {"total": 0, "items": []}

        test = "mutation($input: TestWebhookInput!) { testWebhook(input: $input) { success statusCode message } }"
        tested = data_of(
            await gql(client, test, {"input": {**SPEC_TEST, "url": loopback.url_for("/hook")}}, operator)
        )
        assert tested["testWebhook"] == {
            "success": True,
            "statusCode": 200,
            "message": "Webhook delivered successfully",
        }
        (request,) = loopback.requests_to("/hook")
        assert verify_signature("webhook-secret", request)
        assert request.json()["data"] == SPEC_TEST["payload"]

        deleted = data_of(
            await gql(
                client, "mutation($id: ID!) { deleteWebhook(id: $id) }", {"id": created["id"]}, operator
            )
        )
        assert deleted == {"deleteWebhook": True}
        error_of(
            await gql(client, "query($id: ID!) { webhook(id: $id) { id } }", {"id": created["id"]}, operator),
            "NOT_FOUND",
        )
        error_of(
            await gql(
                client, "mutation($id: ID!) { deleteWebhook(id: $id) }", {"id": created["id"]}, operator
            ),
            "NOT_FOUND",
        )

    async def test_invalid_input_gets_the_same_problems_as_rest(self, client, operator):
        bad = {"url": "https://example.com/x", "events": ["nope"], "secret": "short"}
        rest = problem(await client.post("/api/webhooks", json=bad, headers=operator), 422)
        error = error_of(await gql(client, REGISTER_WEBHOOK, {"input": bad}, operator), "BAD_USER_INPUT")
        assert error["extensions"]["status"] == 422
        assert error["extensions"]["errors"] == rest["errors"]
        bad_scheme = error_of(
            await gql(client, REGISTER_WEBHOOK, {"input": {**SPEC_REGISTER, "url": "ftp://x"}}, operator),
            "BAD_USER_INPUT",
        )
        assert bad_scheme["extensions"]["errors"] == [
            {"pointer": "#/url", "detail": "only http and https URLs are allowed"}
        ]

    async def test_roles_and_ownership(self, client, admin, operator, viewer):
        error_of(await gql(client, REGISTER_WEBHOOK, {"input": SPEC_REGISTER}, viewer), "FORBIDDEN")
        error_of(await gql(client, REGISTER_WEBHOOK, {"input": SPEC_REGISTER}), "UNAUTHENTICATED")
        mine = data_of(await gql(client, REGISTER_WEBHOOK, {"input": SPEC_REGISTER}, operator))[
            "registerWebhook"
        ]
        other = await create_user(client, admin, "oscar", "operator")
        error_of(
            await gql(client, "query($id: ID!) { webhook(id: $id) { id } }", {"id": mine["id"]}, other),
            "NOT_FOUND",
        )
        error_of(
            await gql(
                client,
                "mutation($id: ID!, $i: UpdateWebhookInput!) { updateWebhook(id: $id, input: $i) { id } }",
                {"id": mine["id"], "i": SPEC_UPDATE},
                other,
            ),
            "NOT_FOUND",
        )
        error_of(
            await gql(client, "mutation($id: ID!) { deleteWebhook(id: $id) }", {"id": mine["id"]}, other),
            "NOT_FOUND",
        )
        error_of(
            await gql(
                client,
                "query($id: ID!) { webhookDeliveries(webhookId: $id) { total } }",
                {"id": mine["id"]},
                other,
            ),
            "NOT_FOUND",
        )
        assert data_of(await gql(client, "{ webhooks { total } }", headers=other))["webhooks"]["total"] == 0
        assert data_of(await gql(client, "{ webhooks { total } }", headers=admin))["webhooks"]["total"] == 1


# --- the SSRF guard at registration ---------------------------------------------------------------


@pytest.fixture
def private_networks_refused() -> Iterator[None]:
    """The production default, in the API (settings) and in this process's activities."""
    configure_network(allow_private=False)
    yield
    configure_network(allow_private=True)


#: URLs the guard refuses, and the reason it gives (checked by name, literal or numeric form).
BLOCKED_URLS = [
    ("http://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
    ("http://127.9.9.9:8080/hook", "127.9.9.9 is a loopback address"),
    ("http://[::1]/hook", "::1 is a loopback address"),
    ("http://localhost:8080/hook", "'localhost' resolves to a loopback address"),
    ("http://LocalHost:8080/hook", "'localhost' resolves to a loopback address"),
    ("http://10.1.2.3/hook", "10.1.2.3 is a private address"),
    ("http://192.168.1.20/hook", "192.168.1.20 is a private address"),
    ("http://172.16.0.5/hook", "172.16.0.5 is a private address"),
    ("http://[fd00::5]/hook", "fd00::5 is a private address"),
    ("http://169.254.1.1/hook", "169.254.1.1 is a link-local address"),
    ("http://[fe80::1]/hook", "fe80::1 is a link-local address"),
    ("http://224.0.0.251/hook", "224.0.0.251 is a multicast address"),
    ("http://[ff02::1]/hook", "ff02::1 is a multicast address"),
    ("http://100.64.0.7/hook", "100.64.0.7 is a carrier-grade NAT address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://[::ffff:127.0.0.1]/hook", "127.0.0.1 is a loopback address (embedded in ::ffff:7f00:1)"),
    ("http://[64:ff9b::7f00:1]/hook", "127.0.0.1 is a loopback address (embedded in 64:ff9b::7f00:1)"),
    ("http://2130706433/hook", "'2130706433' resolves to a loopback address"),
    ("http://0177.0.0.1/hook", "'0177.0.0.1' resolves to a loopback address"),
    ("http://0x7f.1/hook", "'0x7f.1' resolves to a loopback address"),
    ("http://0.0.0.0:9000/hook", "0.0.0.0 is an unspecified address"),
]


@pytest.mark.usefixtures("private_networks_refused")
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
class TestSsrfAtRegistration:
    """allow_private_networks off in the API's settings and in the process's network policy."""

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"allow_private_networks": False, "webhook_test_per_minute": 100})

    async def test_registration_is_refused_with_the_reason(self, app, client, operator):
        for url, reason in BLOCKED_URLS:
            body = problem(
                await client.post("/api/webhooks", json={**SPEC_REGISTER, "url": url}, headers=operator), 422
            )
            assert body["detail"] == "The webhook URL is not allowed.", (url, body)
            assert len(body["errors"]) == 1 and body["errors"][0]["pointer"] == "#/url", (url, body)
            detail = body["errors"][0]["detail"]
            assert reason in detail and detail.endswith("only public addresses are allowed"), (url, detail)
        assert await count_webhooks(app) == 0

    async def test_update_is_refused_and_changes_nothing(self, client, operator):
        created = (await client.post("/api/webhooks", json=SPEC_REGISTER, headers=operator)).json()
        for url, reason in BLOCKED_URLS:
            body = problem(
                await client.put(
                    f"/api/webhooks/{created['id']}", json={**SPEC_UPDATE, "url": url}, headers=operator
                ),
                422,
            )
            assert reason in body["errors"][0]["detail"], (url, body)
        assert (await client.get(f"/api/webhooks/{created['id']}", headers=operator)).json() == {
            **created,
            "secret": MASK,
        }

    async def test_test_endpoint_refuses_with_the_reason(self, client, operator):
        for url, reason in BLOCKED_URLS:
            answer = (
                await client.post("/api/webhooks/test", json={**SPEC_TEST, "url": url}, headers=operator)
            ).json()
            assert answer["success"] is False and answer["statusCode"] is None, (url, answer)
            assert answer["message"].startswith("Refused: ") and reason in answer["message"], (url, answer)

    async def test_a_listening_loopback_receiver_is_refused_and_never_contacted(
        self, client, operator, loopback
    ):
        loopback.route("/hook", json={})
        for url in (
            loopback.url_for("/hook"),
            f"http://localhost:{loopback.port}/hook",
            f"http://2130706433:{loopback.port}/hook",
        ):
            problem(
                await client.post("/api/webhooks", json={**SPEC_REGISTER, "url": url}, headers=operator), 422
            )
            result = await client.post("/api/webhooks/test", json={**SPEC_TEST, "url": url}, headers=operator)
            assert result.status_code == 200
            answer = result.json()
            assert answer["success"] is False and answer["statusCode"] is None
            assert answer["message"].startswith("Refused: ") and "loopback" in answer["message"], answer
        assert loopback.requests == []

    async def test_spec_example_and_public_addresses_are_accepted(self, client, operator):
        """An unresolvable name is accepted (checked again at each delivery); public literals too,
        also behind IPv4-mapped or NAT64 forms."""
        for url in (
            SPEC_REGISTER["url"],
            "https://8.8.8.8/hook",
            "http://[::ffff:8.8.8.8]/hook",
            "http://[64:ff9b::808:808]/hook",
        ):
            response = await client.post(
                "/api/webhooks", json={**SPEC_REGISTER, "url": url}, headers=operator
            )
            assert response.status_code == 201, (url, response.text)

    async def test_graphql_registration_is_refused_too(self, client, operator):
        error = error_of(
            await gql(
                client,
                REGISTER_WEBHOOK,
                {"input": {**SPEC_REGISTER, "url": "http://169.254.169.254/"}},
                operator,
            ),
            "BAD_USER_INPUT",
        )
        assert error["extensions"]["errors"][0]["pointer"] == "#/url"
        assert "cloud metadata" in error["extensions"]["errors"][0]["detail"]


# --- POST /api/webhooks/test --------------------------------------------------------------------

MARKER = "RECEIVER-PRIVATE-7d1e5c"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
class TestWebhookTestEndpoint:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"webhook_timeout_seconds": 0.5, "webhook_test_per_minute": 50})

    async def test_spec_example_against_a_receiver(self, client, operator, loopback):
        loopback.route("/webhook", method="POST", json={"received": MARKER})
        response = await client.post(
            "/api/webhooks/test", json={**SPEC_TEST, "url": loopback.url_for("/webhook")}, headers=operator
        )
        assert response.status_code == 200
        assert response.json() == {
            "success": True,
            "statusCode": 200,
            "message": "Webhook delivered successfully",
        }
        assert MARKER not in response.text
        (request,) = loopback.requests_to("/webhook")
        assert request.method == "POST" and request.headers["content-type"] == "application/json"
        body = request.json()
        assert set(body) == {"id", "type", "createdAt", "data"}
        assert body["type"] == "workflow.execution.completed" and body["data"] == SPEC_TEST["payload"]
        assert body["id"] == request.headers["webhook-id"] and body["id"].startswith("msg_")
        assert is_timestamp(body["createdAt"])
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 30
        assert verify_signature("webhook-secret", request)
        assert not verify_signature("another-secret", request)

    async def test_unsigned_without_a_secret(self, client, operator, loopback):
        loopback.route("/webhook", json={})
        body = {key: value for key, value in SPEC_TEST.items() if key != "secret"}
        answer = (
            await client.post(
                "/api/webhooks/test", json={**body, "url": loopback.url_for("/webhook")}, headers=operator
            )
        ).json()
        assert answer["success"] is True
        (request,) = loopback.requests_to("/webhook")
        assert "webhook-signature" not in request.headers
        assert request.headers["webhook-id"] and request.headers["webhook-timestamp"]

    async def test_defaults_event_and_payload(self, client, operator, loopback):
        loopback.route("/webhook", json={})
        answer = (
            await client.post(
                "/api/webhooks/test", json={"url": loopback.url_for("/webhook")}, headers=operator
            )
        ).json()
        assert answer["success"] is True
        body = loopback.requests_to("/webhook")[0].json()
        assert body["type"] == "workflow.execution.completed" and body["data"] == {}

    async def test_signs_only_with_the_secret_in_the_request(self, client, operator, loopback):
        """A webhook registered for the same URL has its own secret: the test call does not use it."""
        loopback.route("/webhook", json={})
        url = loopback.url_for("/webhook")
        await register(client, operator, url, secret="registered-secret-123")
        await client.post(
            "/api/webhooks/test",
            json={**SPEC_TEST, "url": url, "secret": "given-secret-4567"},
            headers=operator,
        )
        await client.post(
            "/api/webhooks/test", json={**SPEC_TEST, "url": url, "secret": None}, headers=operator
        )
        signed, unsigned = loopback.requests_to("/webhook")
        assert verify_signature("given-secret-4567", signed) and not verify_signature(
            "registered-secret-123", signed
        )
        assert "webhook-signature" not in unsigned.headers

    async def test_whsec_secret_signs_with_the_decoded_key(self, client, operator, loopback):
        loopback.route("/webhook", json={})
        key = bytes(range(32))
        secret = "whsec_" + base64.b64encode(key).decode()
        await client.post(
            "/api/webhooks/test",
            json={**SPEC_TEST, "url": loopback.url_for("/webhook"), "secret": secret},
            headers=operator,
        )
        (request,) = loopback.requests_to("/webhook")
        assert verify_signature(secret, request)
        # Not the text of the secret: the bytes it encodes.
        signed = (
            f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode() + request.body
        )
        as_text = (
            "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
        )
        assert request.headers["webhook-signature"] != as_text

    async def test_non_2xx_is_reported_without_the_receivers_body(self, client, operator, loopback):
        url = loopback.url_for("/webhook")
        for status, fragment in (
            (500, "500 Internal Server Error"),
            (404, "404 Not Found"),
            (401, "401 Unauthorized"),
            (410, "410 Gone"),
            (429, "429 Too Many Requests"),
        ):
            loopback.route(
                "/webhook",
                status=status,
                text=f"stack trace with {MARKER}",
                headers={"X-Private": MARKER, "Retry-After": "1"},
            )
            response = await client.post(
                "/api/webhooks/test", json={**SPEC_TEST, "url": url}, headers=operator
            )
            assert response.status_code == 200
            answer = response.json()
            assert answer == {
                "success": False,
                "statusCode": status,
                "message": f"The receiver answered {fragment}",
            }, answer
            assert MARKER not in response.text

    async def test_redirect_is_not_followed(self, client, operator, loopback):
        loopback.route("/webhook", status=302, headers={"Location": "/elsewhere"})
        loopback.route("/elsewhere", json={"followed": MARKER})
        answer = (
            await client.post(
                "/api/webhooks/test",
                json={**SPEC_TEST, "url": loopback.url_for("/webhook")},
                headers=operator,
            )
        ).json()
        assert answer["success"] is False and answer["statusCode"] == 302
        assert "redirect" in answer["message"]
        assert loopback.requests_to("/elsewhere") == []

    async def test_refused_connection(self, client, operator):
        url = f"http://127.0.0.1:{free_port()}/webhook"
        answer = (
            await client.post("/api/webhooks/test", json={**SPEC_TEST, "url": url}, headers=operator)
        ).json()
        assert answer == {
            "success": False,
            "statusCode": None,
            "message": "Could not connect: connection refused",
        }

    async def test_unresolvable_host_is_reported_not_refused(self, client, operator):
        """A test call is one request, not retried: a name that does not resolve is simply reported,
        as a failure to connect (not as a refusal, which is about forbidden addresses)."""
        url = "https://no-such-host.invalid/webhook"
        answer = (
            await client.post("/api/webhooks/test", json={**SPEC_TEST, "url": url}, headers=operator)
        ).json()
        assert answer["success"] is False and answer["statusCode"] is None
        message = answer["message"]
        assert message.startswith("Could not connect: cannot resolve 'no-such-host.invalid'"), answer
        assert "Refused" not in message and "Errno" not in message, answer

    async def test_slow_receiver_times_out_in_bounded_time(self, client, operator, loopback):
        loopback.route("/webhook", delay=30, text=MARKER)
        started = time.monotonic()
        response = await client.post(
            "/api/webhooks/test", json={**SPEC_TEST, "url": loopback.url_for("/webhook")}, headers=operator
        )
        elapsed = time.monotonic() - started
        answer = response.json()
        assert answer == {
            "success": False,
            "statusCode": None,
            "message": "The receiver did not answer within 0.5 s",
        }
        assert elapsed < 5, f"took {elapsed:.1f}s for a 0.5 s timeout"
        assert len(loopback.requests_to("/webhook")) == 1

    async def test_receiver_that_closes_without_answering(self, client, operator, loopback):
        # A handler that raises: the server closes the connection without a response.
        def broken(request: RecordedRequest) -> Reply:
            raise ConnectionAbortedError(MARKER)

        loopback.route("/webhook", handler=broken)
        answer = (
            await client.post(
                "/api/webhooks/test",
                json={**SPEC_TEST, "url": loopback.url_for("/webhook")},
                headers=operator,
            )
        ).json()
        assert answer["success"] is False and answer["statusCode"] is None
        assert answer["message"].startswith("Could not connect: ") and MARKER not in answer["message"], answer

    async def test_invalid_test_request_is_422(self, client, operator, loopback):
        for change, pointer in (
            ({"event": "*"}, "#/event"),
            ({"event": "nope"}, "#/event"),
            ({"url": None}, "#/url"),
            ({"payload": [1]}, "#/payload"),
            ({"secret": "s" * 300}, "#/secret"),
        ):
            body = problem(
                await client.post(
                    "/api/webhooks/test",
                    json={**SPEC_TEST, "url": loopback.url_for("/w"), **change},
                    headers=operator,
                ),
                422,
            )
            assert pointer in {e["pointer"] for e in body["errors"]}, (change, body)
        assert loopback.requests == []

    async def test_non_http_url_is_refused(self, client, operator):
        answer = (
            await client.post(
                "/api/webhooks/test", json={**SPEC_TEST, "url": "file:///etc/passwd"}, headers=operator
            )
        ).json()
        assert answer["success"] is False and "only http and https" in answer["message"]


class TestWebhookTestRateLimit:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"webhook_test_per_minute": 3})

    async def test_per_user_limit_with_retry_after(self, client, admin, operator, loopback):
        loopback.route("/webhook", json={})
        body = {**SPEC_TEST, "url": loopback.url_for("/webhook")}
        for _ in range(3):
            assert (await client.post("/api/webhooks/test", json=body, headers=operator)).json()[
                "success"
            ] is True
        response = await client.post("/api/webhooks/test", json=body, headers=operator)
        limited = problem(response, 429)
        retry_after = int(response.headers["Retry-After"])
        assert 1 <= retry_after <= 61 and limited["retryAfter"] == retry_after
        assert len(loopback.requests_to("/webhook")) == 3, "the refused call sent nothing"
        # GraphQL counts against the same limit.
        error = error_of(
            await gql(
                client,
                "mutation($i: TestWebhookInput!) { testWebhook(input: $i) { success } }",
                {"i": body},
                operator,
            ),
            "RATE_LIMITED",
        )
        assert error["extensions"]["retryAfter"] >= 1
        # Another user has their own budget.
        other = await create_user(client, admin, "oscar", "operator")
        assert (await client.post("/api/webhooks/test", json=body, headers=other)).json()["success"] is True
