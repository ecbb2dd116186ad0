"""Pydantic's validation errors as one OpenAI-style message that names the field and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ARGS_FIELDS = "k, w, method, return_rewards, ignore_eos"
_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before", "lax-or-strict"}


def field_path(loc: Sequence[Any]) -> str | None:
    """('body', 'messages', 0, 'content') → 'messages[0].content'; union branches pydantic adds ('str', 'list[int]') are left out."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" in str(part) or str(part) in _TYPE_NAMES:
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or None


def validation_message(errors: Sequence[dict[str, Any]]) -> tuple[str, str | None, str]:
    """(message, param, code) for the most telling of pydantic's errors."""
    rank = {"json_invalid": 0, "model_attributes_type": 1, "extra_forbidden": 2, "missing": 3}
    error = min(errors, key=lambda e: rank.get(e["type"], 9))
    kind, param = error["type"], field_path(error["loc"])
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} in the request)" if len(errors) > 1 else ""
    if kind == "json_invalid":
        where = error["loc"][1] if len(error["loc"]) > 1 else "?"
        reason = (error.get("ctx") or {}).get("error", "JSON decode error")
        return f"the request body is not valid JSON ({reason} at character {where}): send one JSON object", None, "invalid_json"
    if kind == "model_attributes_type" and param is None:
        return "the request body must be a JSON object with the OpenAI API's fields", None, "invalid_type"
    if kind == "extra_forbidden":
        if param and param.startswith("args."):
            return f"unknown field {param}: args takes {ARGS_FIELDS}{more}", param, "unknown_parameter"
        return (f"unknown field {param}: it is not part of the OpenAI API that args-serve implements (ARGS's own settings go in "
                f"\"args\": {{{ARGS_FIELDS}}}){more}", param, "unknown_parameter")
    if kind == "missing":
        return f"{param} is required{more}", param, "missing_parameter"
    return f"{param}={error.get('input')!r} is not valid: {error['msg']}{more}", param, "invalid_type"
