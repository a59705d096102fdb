"""GraphQL errors: every AppError becomes an error with `extensions.code`; anything else is masked."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import InvalidOperationTypeError

from api import errors

log = logging.getLogger(__name__)

#: The code of each problem class (the most specific class wins).
CODES: list[tuple[type[errors.AppError], str]] = [
    (errors.InvalidInput, "BAD_USER_INPUT"),
    (errors.Unauthenticated, "UNAUTHENTICATED"),
    (errors.Forbidden, "FORBIDDEN"),
    (errors.NotFound, "NOT_FOUND"),
    (errors.Conflict, "CONFLICT"),
    (errors.TooManyRequests, "RATE_LIMITED"),
    (errors.ServiceUnavailable, "SERVICE_UNAVAILABLE"),
]


def code_of(exc: errors.AppError) -> str:
    return next((code for cls, code in CODES if isinstance(exc, cls)), "INTERNAL_SERVER_ERROR")


class ProblemErrors(SchemaExtension):
    """AppErrors keep their message and gain `extensions` (code, status, problems); unexpected
    errors are logged and answered with a bare message, never a stack trace."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        result.errors = [self._convert(error) for error in result.errors]

    def on_stream_result(self, result) -> Iterator[None]:  # type: ignore[no-untyped-def, override]
        # Each result of a subscription: on_operation sees only the last one.
        if getattr(result, "errors", None):
            result.errors = [self._convert(error) for error in result.errors]
        yield

    def _convert(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if original is None:
            # A GraphQL-level problem (syntax, unknown field, limits): the client's mistake.
            extensions = {"code": "GRAPHQL_VALIDATION_FAILED", **(error.extensions or {})}
            return GraphQLError(
                error.message,
                nodes=error.nodes,
                source=error.source,
                positions=error.positions,
                path=error.path,
                extensions=extensions,
            )
        if isinstance(original, errors.AppError):
            extensions: dict[str, object] = {"code": code_of(original), "status": original.status}
            if original.extensions.get("errors"):
                extensions["errors"] = original.extensions["errors"]
            if "retryAfter" in original.extensions:
                extensions["retryAfter"] = original.extensions["retryAfter"]
            return GraphQLError(original.detail, nodes=error.nodes, path=error.path, extensions=extensions)
        if isinstance(original, GraphQLError):
            return original
        if isinstance(original, InvalidOperationTypeError):
            # The legacy graphql-ws protocol carries subscriptions only (strawberry refuses the rest).
            message = (
                f"this transport does not carry {original.operation_type.value} operations; "
                "send queries and mutations over HTTP or graphql-transport-ws"
            )
            return GraphQLError(
                message, nodes=error.nodes, path=error.path, extensions={"code": "BAD_REQUEST", "status": 400}
            )
        log.error("unhandled error in GraphQL %s", error.path, exc_info=original)
        return GraphQLError(
            "An unexpected error occurred.",
            nodes=error.nodes,
            path=error.path,
            extensions={"code": "INTERNAL_SERVER_ERROR"},
        )
