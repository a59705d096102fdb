"""References from a task's `input` to the execution context: `${path}`.

* A string that is exactly `${path}` becomes the value at that path, whatever its JSON type.
* `${path}` inside a longer string becomes the value's text: strings as they are, anything else
  as compact JSON (`true`, `null`, `[1,2]`, `{"a":1}`).
* `$${` is a literal `${` (so `$${x}` renders as the text `${x}`).
* A path is context keys separated by dots, e.g. `${task-1-result.body.items.0.id}`: keys may
  contain dashes, a number indexes a list. Whitespace around the path is ignored.
* A `${` without a closing `}` is left as it is.
* An unknown path fails the task with the non-retryable error type `UnresolvedReference`.

Only string values are rendered; object keys are kept as written. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from temporalio.exceptions import ApplicationError

#: A `$${` escape or a `${path}` reference (the path cannot contain `}`).
_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_EXACT = re.compile(r"\$\{([^}]*)\}")

UNRESOLVED_REFERENCE = "UnresolvedReference"


class _Missing(Exception):
    """A path step that has no value (internal)."""


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """Return `value` (any JSON) with every reference in its strings replaced from `context`."""
    if isinstance(value, str):
        return render_string(value, context)
    if isinstance(value, Mapping):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [render(item, context) for item in value]
    return value


def render_string(text: str, context: Mapping[str, Any]) -> Any:
    """Render one string: an exact `${path}` keeps the value's type, anything else stays a string."""
    if "${" not in text:
        return text
    exact = _EXACT.fullmatch(text)
    if exact:
        return resolve(exact.group(1), context)

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) is None:  # `$${`: the escape for a literal `${`
            return "${"
        return as_text(resolve(match.group(1), context))

    return _TOKEN.sub(substitute, text)


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
    """Every path `value` refers to, in order of appearance (escapes excluded)."""
    found: list[str] = []
    if isinstance(value, str):
        found.extend(m.group(1).strip() for m in _TOKEN.finditer(value) if m.group(1) is not None)
    elif isinstance(value, Mapping):
        for item in value.values():
            found.extend(references(item))
    elif isinstance(value, (list, tuple)):
        for item in value:
            found.extend(references(item))
    return found


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
