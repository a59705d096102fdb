"""Everything the API answers with an error is RFC 9457 problem+json, never a stack trace."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import errors
from api.errors import AppError

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

PROBLEM_MEDIA_TYPE = "application/problem+json"

#: problem types of plain HTTP statuses raised by the framework itself (unknown route, ...)
_FRAMEWORK_ERRORS: dict[int, type[AppError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    406: errors.NotAcceptable,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
}


def problem_body(exc: AppError, instance: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": exc.type_uri,
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
    }
    if instance:
        body["instance"] = instance
    body.update(exc.extensions)
    return body


def problem_response(exc: AppError, instance: str | None = None) -> JSONResponse:
    return JSONResponse(
        problem_body(exc, instance),
        status_code=exc.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=exc.headers,
    )


def _instance(request: Request) -> str:
    # The path as the client sent it (the versioning middleware may have rewritten it).
    return request.scope.get("wfo.original_path", request.url.path)


def json_pointer(parts: Iterable[str | int]) -> str:
    escaped = [str(p).replace("~", "~0").replace("/", "~1") for p in parts]
    return "#/" + "/".join(escaped) if escaped else "#"


def _describe(error: dict[str, Any]) -> dict[str, str]:
    """One framework (pydantic) validation error as a problem entry, without echoing input."""
    location, *path = error.get("loc", ()) or ("body",)
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "malformed JSON")
        return {"pointer": "#", "detail": f"Request body is not valid JSON: {reason}"}
    if error.get("type") == "extra_forbidden":
        message = "Unknown field"
    if location == "body":
        return {"pointer": json_pointer(path), "detail": message}
    name = ".".join(str(p) for p in path) or str(location)
    return {"parameter": name, "in": str(location), "detail": message}


def validation_problem(errs: Sequence[dict[str, Any]]) -> errors.InvalidInput:
    described = [_describe(e) for e in errs]
    # Several pydantic union branches may report the same place: keep each once.
    unique = list({(d.get("pointer"), d.get("parameter"), d["detail"]): d for d in described}.values())
    if len(unique) == 1 and unique[0].get("pointer") == "#":
        return errors.InvalidInput(unique[0]["detail"], unique)
    # A model that lists only the first problems says how many it left out (`omitted`).
    omitted = sum(int((e.get("ctx") or {}).get("omitted", 0)) for e in errs)
    count = len(unique) - (1 if omitted else 0) + omitted
    return errors.InvalidInput(f"The request has {count} problem{'s' if count != 1 else ''}.", unique)


def parse_body(model: type[M], payload: Any) -> M:
    """Validate a request body outside FastAPI (GraphQL) with exactly the REST answer's problems."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_problem([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem_response(exc, _instance(request))


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(validation_problem(exc.errors()), _instance(request))


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it could not decode (not UTF-8, nested too deeply): like malformed JSON.
        invalid = errors.InvalidInput(
            "Request body is not valid JSON: it could not be decoded (not UTF-8, or nested too deeply).",
            [{"pointer": "#", "detail": "Request body is not valid JSON"}],
        )
        return problem_response(invalid, _instance(request))
    cls = _FRAMEWORK_ERRORS.get(exc.status_code)
    if cls is None:
        phrase = _phrase(exc.status_code)
        attributes = {"status": exc.status_code, "title": phrase, "slug": phrase.lower().replace(" ", "-")}
        cls = type("HTTPError", (AppError,), attributes)
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != _phrase(exc.status_code) else None
    if exc.status_code == 404 and detail is None:
        detail = "No resource at this address."
    if exc.status_code == 405:
        detail = f"Method {request.method} is not allowed here."
    problem = cls(detail)
    problem.headers = dict(exc.headers or {})
    return problem_response(problem, _instance(request))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "database error on %s %s: %s", request.method, _instance(request), type(exc).__name__, exc_info=exc
    )
    problem = errors.ServiceUnavailable(
        "The database is unavailable; try again shortly.", headers={"Retry-After": "5"}
    )
    return problem_response(problem, _instance(request))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, _instance(request), exc_info=exc)
    return problem_response(errors.AppError("An unexpected error occurred."), _instance(request))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    # Connection-level failures only: an IntegrityError is a bug or a conflict, not an outage.
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(InterfaceError, _database_error)
    app.add_exception_handler(Exception, _unhandled)


def problem_responses(*classes: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the problems a route can answer with."""
    result: dict[int | str, dict[str, Any]] = {}
    for cls in classes:
        result[cls.status] = {
            "description": cls.title,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return result
