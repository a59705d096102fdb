"""The application's error tree. Services raise these; api/problems.py renders them (RFC 9457).

Classes carry the status, title and type; instances carry the detail and extension members.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://workflow-orchestration.dev/problems/"


class AppError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal"
    headers: dict[str, str]

    def __init__(
        self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extensions: Any
    ):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extensions = extensions
        self.headers = headers or {}

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug


class InvalidInput(AppError):
    """422: the request was understood but its content is invalid. `errors` lists every problem."""

    status = 422
    title = "Unprocessable Content"
    slug = "invalid-input"

    def __init__(self, detail: str, errors: list[dict[str, str]] | None = None):
        super().__init__(detail, errors=errors or [])


class Unauthenticated(AppError):
    status = 401
    title = "Unauthorized"
    slug = "unauthenticated"

    def __init__(self, detail: str = "A valid bearer token is required.", *, invalid_token: bool = False):
        challenge = 'Bearer realm="workflow-orchestration"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class InvalidCredentials(Unauthenticated):
    slug = "invalid-credentials"

    def __init__(self) -> None:
        # One answer for an unknown user, a wrong password and a disabled account.
        super().__init__("Invalid username or password.")


class Forbidden(AppError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(AppError):
    status = 404
    title = "Not Found"
    slug = "not-found"


class DefinitionNotFound(NotFound):
    slug = "definition-not-found"

    def __init__(self, definition_id: str, version: str | None = None):
        what = f"Workflow definition {definition_id!r}"
        if version is not None:
            what += f" has no version {version!r}"
        else:
            what += " does not exist"
        super().__init__(what + ".")


class ExecutionNotFound(NotFound):
    slug = "execution-not-found"

    def __init__(self, execution_id: str):
        super().__init__(f"Workflow execution {execution_id!r} does not exist.")


class TaskExecutionNotFound(NotFound):
    slug = "task-execution-not-found"

    def __init__(self, task_execution_id: str):
        super().__init__(f"Task execution {task_execution_id!r} does not exist.")


class WebhookNotFound(NotFound):
    slug = "webhook-not-found"

    def __init__(self, webhook_id: str):
        super().__init__(f"Webhook {webhook_id!r} does not exist.")


class DeliveryNotFound(NotFound):
    slug = "delivery-not-found"

    def __init__(self, delivery_id: str):
        super().__init__(f"Delivery {delivery_id!r} does not exist.")


class UserNotFound(NotFound):
    slug = "user-not-found"

    def __init__(self, user_id: str):
        super().__init__(f"User {user_id!r} does not exist.")


class MethodNotAllowed(AppError):
    status = 405
    title = "Method Not Allowed"
    slug = "method-not-allowed"


class NotAcceptable(AppError):
    status = 406
    title = "Not Acceptable"
    slug = "not-acceptable"


class Conflict(AppError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class ExecutionConflict(Conflict):
    """The execution or task is not in a state that allows this."""

    slug = "execution-conflict"


class PayloadTooLarge(AppError):
    status = 413
    title = "Content Too Large"
    slug = "payload-too-large"


class UnsupportedMediaType(AppError):
    status = 415
    title = "Unsupported Media Type"
    slug = "unsupported-media-type"


class TooManyRequests(AppError):
    status = 429
    title = "Too Many Requests"
    slug = "too-many-requests"

    def __init__(self, detail: str, retry_after: int):
        super().__init__(
            detail, headers={"Retry-After": str(max(1, retry_after))}, retryAfter=max(1, retry_after)
        )


class ServiceUnavailable(AppError):
    status = 503
    title = "Service Unavailable"
    slug = "service-unavailable"
