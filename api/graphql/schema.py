"""The schema and the router mounted at /graphql (GraphiQL in a browser, both WebSocket protocols)."""

from __future__ import annotations

from functools import partial
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    QueryDepthLimiter,
)
from strawberry.fastapi import GraphQLRouter
from strawberry.schema.config import StrawberryConfig
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types import ExecutionContext
from strawberry.types.unset import UnsetType

from api.errors import AppError
from api.graphql.context import Context, get_context
from api.graphql.errors import ProblemErrors, code_of
from api.graphql.limits import complexity_rule
from api.graphql.mutations import Mutation
from api.graphql.queries import Query
from api.graphql.scalars import SCALARS
from api.graphql.subscriptions import Subscription
from api.settings import Settings


class Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Log nothing here: ProblemErrors logs unexpected errors once; the client's own mistakes
        (not found, invalid input, ...) are answers, not incidents."""


def build_schema(settings: Settings) -> strawberry.Schema:
    # Factories, not instances: strawberry builds each request its own extension objects.
    extensions: list[Any] = [
        ProblemErrors,
        partial(QueryDepthLimiter, max_depth=settings.graphql_max_depth),
        partial(MaxAliasesLimiter, max_alias_count=settings.graphql_max_aliases),
        partial(AddValidationRules, [complexity_rule(settings.graphql_max_cost, settings.page_max_limit)]),
    ]
    if not settings.graphql_introspection:
        extensions.append(DisableIntrospection)
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(scalar_map=SCALARS, batching_config={"max_operations": settings.graphql_max_batch}),
    )


class AuthenticatedRouter(GraphQLRouter[Context, None]):
    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """No WebSocket session without a valid token: in connection_init's payload
        (`{"Authorization": "Bearer ..."}`) or the handshake's Authorization header."""
        try:
            await context.principal()
        except AppError as exc:
            raise ConnectionRejectionError({"code": code_of(exc), "message": exc.detail}) from exc
        return await super().on_ws_connect(context)


def graphql_router(settings: Settings) -> GraphQLRouter[Context, None]:
    return AuthenticatedRouter(
        build_schema(settings),
        path="/graphql",
        context_getter=get_context,
        graphql_ide="graphiql",
        subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL],
        keep_alive=True,
        keep_alive_interval=15,
        tags=["graphql"],
    )
