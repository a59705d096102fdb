"""The schema and the router mounted at /graphql (GraphiQL in a browser, both WebSocket protocols)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import strawberry
from fastapi import Request, WebSocket
from fastapi.responses import HTMLResponse
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import GraphQLError
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import DisableIntrospection, MaxTokensLimiter, SchemaExtension
from strawberry.fastapi import GraphQLRouter
from strawberry.schema.config import StrawberryConfig
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UnsetType

from api.errors import AppError
from api.graphql.context import Context, SessionLegacyWSHandler, SessionTransportWSHandler, get_context
from api.graphql.errors import ProblemErrors, code_of
from api.graphql.limits import DocumentLimits, document_limits_rule
from api.graphql.mutations import Mutation
from api.graphql.queries import Query
from api.graphql.scalars import SCALARS
from api.graphql.subscriptions import Subscription
from api.pages import graphiql_page
from api.settings import Settings


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Log nothing here: ProblemErrors logs unexpected errors once; the client's own mistakes
        (not found, invalid input, ...) are answers, not incidents."""


#: Lists of objects smaller than WFO_MAX_TASKS (api.models.definitions caps them); the others
#: (tasks, task executions, synchronization points, blockers, milestones) may hold that many.
SMALL_LISTS = {"ResourceRequirements.custom": 50}


def document_limits(settings: Settings) -> DocumentLimits:
    return DocumentLimits(
        max_depth=settings.graphql_max_depth,
        max_aliases=settings.graphql_max_aliases,
        max_cost=settings.graphql_max_cost,
        max_page=settings.page_max_limit,
        max_list=settings.max_tasks,
        list_sizes=SMALL_LISTS,
    )


class DocumentLimitsGuard(SchemaExtension):
    """Depth, aliases and cost in one rule that measures each fragment once (api.graphql.limits),
    instead of strawberry's QueryDepthLimiter and MaxAliasesLimiter, which follow every spread.
    Built per operation: a `limit: $n` is priced by the `n` sent with it."""

    def __init__(self, limits: DocumentLimits) -> None:
        self.limits = limits

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        rule = document_limits_rule(self.limits, context.variables)
        context.validation_rules = (*context.validation_rules, rule)
        yield


class SubscriptionsOverWebSocket(SchemaExtension):
    """A subscription sent over plain HTTP would run as a query and end in a null for a
    non-null field (an "unexpected error"): answer where subscriptions are served instead."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        if context.operation_type is OperationType.SUBSCRIPTION and not isinstance(
            getattr(context.context, "request", None), WebSocket
        ):
            context.result = GraphQLExecutionResult(
                data=None,
                errors=[
                    GraphQLError(
                        "subscriptions are served over WebSocket at /graphql (graphql-transport-ws or graphql-ws), "
                        "not over HTTP",
                        extensions={"code": "BAD_REQUEST", "status": 400},
                    )
                ],
            )
        yield


def build_schema(settings: Settings) -> strawberry.Schema:
    # Factories, not instances: strawberry builds each request its own extension objects.
    extensions: list[Any] = [
        ProblemErrors,
        SubscriptionsOverWebSocket,
        partial(MaxTokensLimiter, max_token_count=settings.graphql_max_tokens),
        partial(DocumentLimitsGuard, document_limits(settings)),
    ]
    if not settings.graphql_introspection:
        extensions.append(DisableIntrospection)
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(
            scalar_map=SCALARS, batching_config={"max_operations": settings.graphql_max_batch}
        ),
    )


class AuthenticatedRouter(GraphQLRouter[Context, None]):
    # WebSocket sessions that end at token expiry or revocation, with per-connection and per-user limits.
    graphql_transport_ws_handler_class = SessionTransportWSHandler
    graphql_ws_handler_class = SessionLegacyWSHandler

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """No WebSocket session without a valid token: in connection_init's payload
        (`{"Authorization": "Bearer ..."}`) or the handshake's Authorization header."""
        try:
            await context.principal()
        except AppError as exc:
            raise ConnectionRejectionError({"code": code_of(exc), "message": exc.detail}) from exc
        return await super().on_ws_connect(context)

    async def render_graphql_ide(self, request: Request) -> HTMLResponse:
        # GraphiQL from this service's own assets (api/pages), not strawberry's CDN page.
        return graphiql_page(request)


def graphql_router(settings: Settings) -> GraphQLRouter[Context, None]:
    return AuthenticatedRouter(
        build_schema(settings),
        path="/graphql",
        context_getter=get_context,
        # GraphiQL helps an attacker as much as a developer: served only when asked (WFO_API_DOCS).
        graphql_ide="graphiql" if settings.api_docs else None,
        subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL],
        keep_alive=True,
        keep_alive_interval=15,
        tags=["graphql"],
    )
