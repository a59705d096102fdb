"""Secrets for task inputs: `${secret:NAME}`, resolved on the worker at the last moment.

A definition says `"headers": {"Authorization": "Bearer ${secret:CRM_TOKEN}"}`; the reference is
what the API stores, what Temporal's history holds and what viewers and webhooks see. The value
exists only in the worker process, only while the `http` task sends its request:

* NAME is a letter or `_`, then letters, digits or `_` (at most 128): it must work as an
  environment variable's name and as a file name.
* The value is the file `NAME` in the directory WFO_SECRETS_DIR (a mounted Kubernetes or Docker
  secret; one trailing newline is dropped) when there is such a file, else the environment
  variable `WFO_SECRET_<NAME>` of the worker. Read at every use, so a rotated file counts at once.
* A name with neither fails the task (non-retryable `UnknownSecret`, naming the secret, never a
  value); so does an empty value.
* Every value a task used is replaced by `[secret:NAME]` in its result and in its error message
  and details (verbatim occurrences: an answer that echoes the token does not leak it).

These variables are read here rather than through Settings: their names are open-ended, so they
cannot be Settings fields. Custom task types can call `reveal(name)` themselves.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

UNKNOWN_SECRET = "UnknownSecret"
INVALID_SECRET = "InvalidSecret"
ENV_PREFIX = "WFO_SECRET_"
#: Largest secret file read: a credential, not a document.
MAX_SECRET_BYTES = 64 * 1024
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

_directory: Path | None = None


def configure_secrets(*, directory: Path | None) -> None:
    """Set this worker's secrets directory (worker.py, from WFO_SECRETS_DIR)."""
    global _directory
    _directory = directory


def reveal(name: str) -> str:
    """The value of secret `name`; ApplicationError (non-retryable) when there is none."""
    if not _NAME.fullmatch(name):
        raise ApplicationError(
            f"{name[:130]!r} is not a valid secret name: a letter or '_', then letters, digits or '_'",
            {"secret": name[:130]},
            type=INVALID_SECRET,
            non_retryable=True,
        )
    value = _from_file(name)
    if value is None:
        value = os.environ.get(ENV_PREFIX + name)
    if value is None:
        where = f"a file {name} in {_directory} or " if _directory is not None else ""
        raise ApplicationError(
            f"unknown secret {name!r}: this worker has no {where}environment variable {ENV_PREFIX}{name}",
            {"secret": name},
            type=UNKNOWN_SECRET,
            non_retryable=True,
        )
    if not value:
        raise ApplicationError(
            f"secret {name!r} is empty", {"secret": name}, type=INVALID_SECRET, non_retryable=True
        )
    return value


def _from_file(name: str) -> str | None:
    if _directory is None:
        return None
    path = _directory / name
    if not path.is_file():
        return None
    with path.open("rb") as file:
        data = file.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise _invalid(name, f"its file is over {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise _invalid(name, "its file is not UTF-8 text") from None
    # `echo token > file` leaves a newline that is no part of the secret.
    return text.removesuffix("\n").removesuffix("\r")


def _invalid(name: str, reason: str) -> ApplicationError:
    return ApplicationError(
        f"secret {name!r} cannot be used: {reason}", {"secret": name}, type=INVALID_SECRET, non_retryable=True
    )


class UsedSecrets:
    """The secrets one task attempt revealed, to take them out of whatever it reports."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def reveal(self, name: str) -> str:
        """`reveal(name)`, remembered for redaction (a `secrets` resolver for templating.render)."""
        value = self._values[name] = reveal(name)
        return value

    def redact(self, value: Any) -> Any:
        """`value` (JSON) with every revealed value in its strings replaced by `[secret:NAME]`."""
        if not self._values:
            return value
        if isinstance(value, str):
            # Longest first: a secret that contains another is replaced whole.
            for name, secret in sorted(self._values.items(), key=lambda item: -len(item[1])):
                value = value.replace(secret, f"[secret:{name}]")
            return value
        if isinstance(value, dict):
            return {self.redact(key): self.redact(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact(item) for item in value]
        return value

    def redact_error(self, error: ApplicationError) -> ApplicationError:
        """The same error with the revealed values taken out of its message and details."""
        if not self._values:
            return error
        return ApplicationError(
            self.redact(error.message),
            *(self.redact(detail) for detail in error.details),
            type=error.type,
            non_retryable=error.non_retryable,
            next_retry_delay=error.next_retry_delay,
            category=error.category,
        )
