"""Example python task functions, registered on import (worker.py imports this module by default).

```json
{"type": "python", "input": {"function": "word_count", "text": "to be or not to be"}}
{"type": "python", "input": {"function": "word_count", "path": "task-1-result.body"}}
{"type": "python", "input": {"function": "sum", "values": [1, 2.5, "${task-2-result.total}"]}}
```
"""

from __future__ import annotations

import math
from typing import Any

from temporalio.exceptions import ApplicationError

from activities.registry import task_function
from activities.templating import as_text, resolve


@task_function("word_count")
def word_count(input: dict[str, Any], context: dict[str, Any]) -> dict[str, int]:
    """Counts the words, lines and characters of `input.text`, or of the context value at `input.path`."""
    if "text" in input:
        value = input["text"]
    elif isinstance(input.get("path"), str):
        value = resolve(input["path"], context)
    else:
        raise ApplicationError(
            "word_count needs input.text, or input.path naming a context value",
            type="InvalidInput",
            non_retryable=True,
        )
    text = "" if value is None else as_text(value)
    return {"words": len(text.split()), "lines": len(text.splitlines()), "characters": len(text)}


@task_function("sum")
def sum_values(input: dict[str, Any], context: dict[str, Any]) -> dict[str, float | int]:
    """Adds up `input.values` (numbers, or strings holding numbers); result `{"sum", "count"}`."""
    values = input.get("values")
    if not isinstance(values, list):
        raise ApplicationError(
            "sum needs input.values: a list of numbers", type="InvalidInput", non_retryable=True
        )
    numbers: list[float | int] = []
    for position, value in enumerate(values):
        numbers.append(_number(value, position))
    return {"sum": sum(numbers), "count": len(numbers)}


def _number(value: Any, position: int) -> float | int:
    """A number from a JSON number or a numeric string; InvalidInput otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
    raise ApplicationError(
        f"sum: input.values[{position}] is not a number: {value!r}", type="InvalidInput", non_retryable=True
    )
