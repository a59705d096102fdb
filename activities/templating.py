"""References from a task's `input` to the execution context: `${path}`.

* A string that is exactly `${path}` becomes the value at that path, whatever its JSON type.
* `${path}` inside a longer string becomes the value's text: strings as they are, anything else
  as compact JSON (`true`, `null`, `[1,2]`, `{"a":1}`).
* `$${` is a literal `${` (so `$${x}` renders as the text `${x}`).
* A path is context keys separated by dots, e.g. `${task-1-result.body.items.0.id}`: keys may
  contain dashes, a number indexes a list. Whitespace around the path is ignored.
* A `${` without a closing `}` is left as it is.
* An unknown path fails the task with the non-retryable error type `UnresolvedReference`.
* `${secret:NAME}` names a secret of the worker, not a context path (see `activities.secrets`):
  `render` keeps it as written unless given a `secrets` resolver (the `http` task gives one just
  before its request). References come only from the input's own text: a context value that
  holds `${...}` is substituted as plain text and never expanded, so data cannot name a secret.
* The rendered input is capped (`limit`, default WFO_MAX_RENDERED_INPUT_BYTES on workers): a
  small input can reference a large value many times, and the worker would build all of it.
  Past the cap the task fails with the non-retryable error type `InputTooLarge`.

Only string values are rendered; object keys are kept as written. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from temporalio.exceptions import ApplicationError

#: A `$${` escape or a `${path}` reference (the path cannot contain `}`).
_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_EXACT = re.compile(r"\$\{([^}]*)\}")

UNRESOLVED_REFERENCE = "UnresolvedReference"
INPUT_TOO_LARGE = "InputTooLarge"
SECRET_PREFIX = "secret:"
#: Largest rendered input, in bytes of its strings and substituted values, unless configured.
DEFAULT_RENDER_LIMIT = 4 * 1024 * 1024

_render_limit = DEFAULT_RENDER_LIMIT

#: Returns a secret's value by name (raises if there is none).
SecretResolver = Callable[[str], str]


class _Missing(Exception):
    """A path step that has no value (internal)."""


def configure_rendering(*, limit: int) -> None:
    """Set this worker's default cap on rendered inputs (worker.py, from WFO_MAX_RENDERED_INPUT_BYTES)."""
    global _render_limit
    _render_limit = limit


def render(
    value: Any, context: Mapping[str, Any], *, limit: int | None = None, secrets: SecretResolver | None = None
) -> Any:
    """Return `value` (any JSON) with every reference in its strings replaced from `context`.

    `limit`: most bytes the rendered strings and substituted values may add up to (default: the
    worker's). `secrets`: resolves `${secret:NAME}`; without it those references stay as written.
    """
    return _Renderer(context, limit if limit is not None else _render_limit, secrets).render(value)


def render_string(text: str, context: Mapping[str, Any]) -> Any:
    """Render one string: an exact `${path}` keeps the value's type, anything else stays a string."""
    return _Renderer(context, _render_limit, None).render(text)


class _Renderer:
    """One rendering: the context, the secrets resolver and what is left of the size budget."""

    def __init__(self, context: Mapping[str, Any], limit: int, secrets: SecretResolver | None) -> None:
        self.context = context
        self.limit = limit
        self.left = limit
        self.secrets = secrets

    def render(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.string(value)
        if isinstance(value, Mapping):
            return {key: self.render(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.render(item) for item in value]
        return value

    def string(self, text: str) -> Any:
        if "${" not in text:
            self.spend(_size(text))
            return text
        exact = _EXACT.fullmatch(text)
        if exact:
            value = self.reference(exact.group(1), exact.group(0))
            self.spend(_size(value if isinstance(value, str) else as_text(value)))
            return value

        def substitute(match: re.Match[str]) -> str:
            piece = (
                "${" if match.group(1) is None else as_text(self.reference(match.group(1), match.group(0)))
            )
            # Counted as it is made: 200k references to 1 MB stop after a few, not after 200 GB.
            self.spend(_size(piece) - len(match.group(0)))
            return piece

        self.spend(_size(text))
        return _TOKEN.sub(substitute, text)

    def reference(self, path: str, written: str) -> Any:
        """A context value, a secret (when resolving them) or, for an unresolved secret, the text as written."""
        name = _secret_name(path)
        if name is None:
            return resolve(path, self.context)
        return written if self.secrets is None else self.secrets(name)

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise ApplicationError(
                f"the rendered input is over the limit of {self.limit} bytes: its ${{...}} references expand"
                " to too much; pass large values by reference (a URL or a key) instead of copying them",
                {"limit": self.limit},
                type=INPUT_TOO_LARGE,
                non_retryable=True,
            )


def resolve(path: str, context: Mapping[str, Any]) -> Any:
    """The value at a dotted `path` in `context`; raises ApplicationError `UnresolvedReference`."""
    path = path.strip()
    if not path:
        raise _unresolved(path, "the reference is empty")
    current: Any = context
    walked: list[str] = []
    for step in path.split("."):
        try:
            current = _step(current, step)
        except _Missing as missing:
            where = ".".join(walked) or "the context"
            raise _unresolved(path, f"{where} {missing}") from None
        walked.append(step)
    return current


def references(value: Any) -> list[str]:
    """Every context path `value` refers to, in order of appearance (escapes and secrets excluded)."""
    return [path for path in _all_references(value) if _secret_name(path) is None]


def secret_references(value: Any) -> list[str]:
    """The names of the secrets `value` refers to, in order of appearance."""
    return [name for path in _all_references(value) if (name := _secret_name(path)) is not None]


def _all_references(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, str):
        found.extend(m.group(1).strip() for m in _TOKEN.finditer(value) if m.group(1) is not None)
    elif isinstance(value, Mapping):
        for item in value.values():
            found.extend(_all_references(item))
    elif isinstance(value, (list, tuple)):
        for item in value:
            found.extend(_all_references(item))
    return found


def _secret_name(path: str) -> str | None:
    """NAME for a `secret:NAME` reference, else None (a context path)."""
    path = path.strip()
    return path[len(SECRET_PREFIX) :].strip() if path.startswith(SECRET_PREFIX) else None


def _size(text: str) -> int:
    """UTF-8 length, without encoding ASCII text (the common case) to find it."""
    return len(text) if text.isascii() else len(text.encode())


def as_text(value: Any) -> str:
    """How a value reads inside a longer string: strings verbatim, anything else compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _step(current: Any, step: str) -> Any:
    """One path step: a key of an object or an index of a list."""
    if isinstance(current, Mapping):
        if step not in current:
            raise _Missing(f"has no key {step!r}")
        return current[step]
    if isinstance(current, (list, tuple)):
        if not step.isdigit():
            raise _Missing(f"is a list; {step!r} is not an index")
        index = int(step)
        if index >= len(current):
            raise _Missing(f"has {len(current)} items; index {index} is out of range")
        return current[index]
    kind = "null" if current is None else type(current).__name__
    raise _Missing(f"is {kind}, which has no {step!r}")


def _unresolved(path: str, reason: str) -> ApplicationError:
    """The non-retryable error for a reference that names nothing in the context."""
    return ApplicationError(
        f"unresolved reference ${{{path}}}: {reason}",
        {"reference": path},
        type=UNRESOLVED_REFERENCE,
        non_retryable=True,
    )
