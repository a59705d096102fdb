"""Built-in task types run as activities (queue wfo-tasks or a task's own queue). No database access.

* `noop`: result `"success"`.
* `http`: one HTTP request with httpx (input below); 5xx, 408, 429 and network errors retry
  (a host name that does not resolve included), other unexpected statuses and refused
  destinations do not. Result `{"status", "headers", "body"}`.
* `python`: the function registered with `@task_function(input.function)`.

`sleep` and `approval` are run by the interpreter workflow itself (a timer, an update), not here.
Every type goes through `activities.registry.run_task` (templating, capacity, heartbeats, result
size, error details).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.capacity import worker_identity
from activities.netguard import (
    BlockedDestination,
    ResponseTooLarge,
    UnresolvableHost,
    UnsupportedEncoding,
    guarded_request,
    network_policy,
    read_capped,
)
from activities.registry import RESULT_TOO_LARGE, call, current_task, registry, task_type
from activities.secrets import UsedSecrets
from activities.templating import render, secret_references
from workflows.constants import UNKNOWN_FUNCTION
from workflows.inputs import TaskInput

INVALID_INPUT = "InvalidInput"
HTTP_CLIENT_ERROR = "HttpClientError"
HTTP_SERVER_ERROR = "HttpServerError"
HTTP_NETWORK_ERROR = "HttpNetworkError"
#: The host name does not resolve (now): retried like a network error, each attempt checked again.
UNRESOLVABLE_HOST = "UnresolvableHost"
UNSUPPORTED_ENCODING = "UnsupportedContentEncoding"

DEFAULT_HTTP_TIMEOUT = 30.0
DEFAULT_REDIRECTS = 5
DESTINATION_REFUSED = "DestinationRefused"
#: Statuses below 500 that are worth retrying (the server asks to come back later).
RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})
#: Longest Retry-After honoured as the next retry delay.
MAX_RETRY_AFTER = 3600
#: How much of an unexpected response's body an error carries.
ERROR_BODY_CHARS = 1000
_METHOD = re.compile(r"^[A-Z]{1,20}$")


@task_type("noop")
async def noop(task: TaskInput) -> str:
    """Completes at once with the result "success"."""
    return "success"


@task_type("http")
async def http(task: TaskInput) -> dict[str, Any]:
    """One HTTP request.

    Input: `url` (http or https), `method` (default GET), `headers` (object), `body` (an object or
    list is sent as JSON, a string as text), `expectStatus` (a status or a list; default any 2xx),
    `timeoutSeconds` (the whole exchange: connect, headers and body; default 30),
    `responseHeaders` (names to keep; default all), `followRedirects` (hops to follow, default 5;
    0 or false: a 3xx is the answer). Every hop's address is checked like the first (no private
    networks unless the worker allows them); a hop to another origin drops `Authorization`,
    `Cookie`, `Proxy-Authorization` and every header that carries a secret.
    `${secret:NAME}` anywhere in the input is resolved on this worker (see activities.secrets);
    the values never appear in the result or in an error.
    Result: `{"status": int, "headers": {lowercased name: value}, "body": JSON if the response
    says it is JSON, else text; null when empty}`. The body is read up to the task's result
    limit (decoded bytes: a gzip bomb stops there too).
    """
    used = UsedSecrets()
    try:
        spec, secret_headers = _input_with_secrets(task, used)
        return used.redact(await _exchange(task, spec, secret_headers, used))
    except ApplicationError as err:
        # `from None`: a cause would travel to Temporal with its own message.
        raise used.redact_error(err) from None
    except Exception as err:  # noqa: BLE001 - reported as run_task would, without the secrets it may hold
        raise used.redact_error(
            ApplicationError(str(err) or type(err).__name__, type=type(err).__name__)
        ) from None


def _input_with_secrets(task: TaskInput, used: UsedSecrets) -> tuple[dict[str, Any], set[str]]:
    """The input to send (secrets revealed) and the names of the headers that carry a secret."""
    original = current_task()
    if not secret_references(original.input):
        return task.input or {}, set()
    # Rendered again from the definition's own text, in one pass with the secrets: a context
    # value that says `${secret:...}` stays text, so data from elsewhere can never name a secret.
    spec = render(original.input or {}, original.context, secrets=used.reveal)
    headers = (original.input or {}).get("headers")
    names = (
        {str(name) for name, value in headers.items() if secret_references(value)}
        if isinstance(headers, dict)
        else set()
    )
    return spec, names


async def _exchange(
    task: TaskInput, spec: dict[str, Any], secret_headers: set[str], used: UsedSecrets
) -> dict[str, Any]:
    method = _method(spec.get("method", "GET"))
    url = _url(spec.get("url"))
    headers = _headers(spec.get("headers"))
    expected = _expected_statuses(spec.get("expectStatus"))
    timeout = _timeout(spec.get("timeoutSeconds", DEFAULT_HTTP_TIMEOUT))
    keep_headers = _header_names(spec.get("responseHeaders"))
    redirects = _redirects(spec.get("followRedirects", DEFAULT_REDIRECTS))
    content, json_body = _body(spec.get("body"), headers)
    safe_url = used.redact(redact_url(url))
    limit = task.max_result_bytes

    try:
        # One deadline for everything (httpx's own timeout is per step: a server that sends a
        # byte a second would never trip it).
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
                response = await guarded_request(
                    client,
                    method,
                    url,
                    policy=network_policy(),
                    max_redirects=redirects,
                    headers=headers,
                    secret_headers=secret_headers,
                    content=content,
                    json=json_body,
                    stream=True,
                )
                try:
                    raw = await read_capped(response, limit)
                finally:
                    await response.aclose()
    except UnresolvableHost as err:
        # DNS failures are transient; the SSRF check runs again on the next attempt's answer.
        raise ApplicationError(f"{method} {safe_url} failed: {err}", type=UNRESOLVABLE_HOST) from None
    except BlockedDestination as err:
        raise ApplicationError(
            f"{method} {safe_url} refused: {err}", type=DESTINATION_REFUSED, non_retryable=True
        ) from None
    except ResponseTooLarge:
        raise ApplicationError(
            f"the response body of {safe_url} is over {limit} bytes, the limit of a task result",
            {"limit": limit},
            type=RESULT_TOO_LARGE,
            non_retryable=True,
        ) from None
    except UnsupportedEncoding as err:
        raise ApplicationError(
            f"{method} {safe_url}: {err}", type=UNSUPPORTED_ENCODING, non_retryable=True
        ) from None
    except TimeoutError:
        raise ApplicationError(
            f"{method} {safe_url} timed out after {timeout:g} s", type=HTTP_NETWORK_ERROR
        ) from None
    except httpx.TimeoutException as err:
        raise ApplicationError(
            f"{method} {safe_url} timed out after {timeout:g} s ({type(err).__name__})",
            type=HTTP_NETWORK_ERROR,
        ) from None
    except (httpx.InvalidURL, httpx.LocalProtocolError, httpx.UnsupportedProtocol, UnicodeEncodeError) as err:
        # Checked before TransportError, their base: the request itself is wrong, retrying cannot help.
        raise ApplicationError(
            f"{method} {safe_url} cannot be sent: {err}", type=INVALID_INPUT, non_retryable=True
        ) from None
    except (httpx.TransportError, httpx.DecodingError) as err:
        raise ApplicationError(
            f"{method} {safe_url} failed: {type(err).__name__}: {err or 'no response'}",
            type=HTTP_NETWORK_ERROR,
        ) from None

    status = response.status_code
    body = _parse_body(response, raw)
    activity.logger.info("http task %s: %s %s -> %d", task.task_id, method, safe_url, status)
    if not (status in expected if expected is not None else 200 <= status < 300):
        raise _unexpected_status(method, safe_url, response, body)
    return {"status": status, "headers": _response_headers(response, keep_headers), "body": body}


@task_type("python")
async def python(task: TaskInput) -> Any:
    """Calls the function registered with `@task_function(input.function)` as `fn(rest of input, context)`."""
    params = dict(task.input or {})
    name = params.pop("function", None)
    if not isinstance(name, str) or not name:
        raise ApplicationError(
            "a python task needs input.function: the name of a registered function",
            type=INVALID_INPUT,
            non_retryable=True,
        )
    fn = registry.function(name)
    if fn is None:
        # Retryable: Temporal hands a queue's tasks to any of its workers, and another one may
        # have loaded the function (the attempts of the task's retry policy bound the search).
        info = activity.info()
        available = registry.function_names()
        raise ApplicationError(
            f"python function {name!r} is not on worker {worker_identity()!r} of queue"
            f" {info.task_queue!r} (it has: {', '.join(available) or 'none'}); a worker of that queue"
            f" that loads it (wfo-worker --queue {info.task_queue} --load MODULE) runs a later attempt",
            {"function": name, "available": available},
            type=UNKNOWN_FUNCTION,
        )
    return await call(fn, params, task.context)


# --- http helpers ------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to log and to put in errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _invalid(message: str) -> ApplicationError:
    return ApplicationError(message, type=INVALID_INPUT, non_retryable=True)


def _method(value: Any) -> str:
    method = value.upper() if isinstance(value, str) else value
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise _invalid(f"input.method must be an HTTP method such as GET or POST, not {value!r}")
    return method


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid("input.url is required: an http or https URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as err:
        raise _invalid(f"input.url is not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(f"input.url must be an http or https URL with a host, not {redact_url(value)!r}")
    return value


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("input.headers must be an object of header names to values")
    return {str(name): text if isinstance(text, str) else json.dumps(text) for name, text in value.items()}


def _header_names(value: Any) -> set[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise _invalid("input.responseHeaders must be a list of header names")
    return {name.lower() for name in value}


def _expected_statuses(value: Any) -> set[int] | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in values
    ):
        raise _invalid(f"input.expectStatus must be an HTTP status or a list of them, not {value!r}")
    return set(values)


def _redirects(value: Any) -> int:
    if isinstance(value, bool):
        return DEFAULT_REDIRECTS if value else 0
    if isinstance(value, int) and 0 <= value <= 20:
        return value
    raise _invalid("input.followRedirects must be true, false or a number of hops from 0 to 20")


def _timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 24 * 3600:
        raise _invalid(f"input.timeoutSeconds must be a number of seconds above 0, not {value!r}")
    return float(value)


def _body(value: Any, headers: dict[str, str]) -> tuple[str | None, Any]:
    """(text content, JSON content) for httpx; a text body gets a text/plain type unless one is given."""
    if value is None:
        return None, None
    if isinstance(value, str):
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "text/plain; charset=utf-8"
        return value, None
    return None, value


def _parse_body(response: httpx.Response, raw: bytes) -> Any:
    """JSON when the response's media type says JSON (and it parses), else text; None when empty."""
    if not raw:
        return None
    text = raw.decode(response.charset_encoding or "utf-8", errors="replace")
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _response_headers(response: httpx.Response, keep: set[str] | None) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if keep is None or name in keep}


def _unexpected_status(method: str, safe_url: str, response: httpx.Response, body: Any) -> ApplicationError:
    """HttpServerError (retryable) for 5xx, HttpClientError otherwise (retryable only for 408/429)."""
    status = response.status_code
    excerpt = "" if body is None else body if isinstance(body, str) else json.dumps(body)
    details = {"status": status, "body": excerpt[:ERROR_BODY_CHARS]}
    message = f"{method} {safe_url} answered {status} {response.reason_phrase}".rstrip()
    if status >= 500:
        return ApplicationError(message, details, type=HTTP_SERVER_ERROR)
    if status in RETRYABLE_CLIENT_STATUSES:
        return ApplicationError(
            message, details, type=HTTP_CLIENT_ERROR, next_retry_delay=_retry_after(response)
        )
    return ApplicationError(message, details, type=HTTP_CLIENT_ERROR, non_retryable=True)


def _retry_after(response: httpx.Response) -> timedelta | None:
    """A Retry-After given in seconds, capped; None otherwise (the retry policy decides)."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return timedelta(seconds=min(int(value), MAX_RETRY_AFTER))
    return None
