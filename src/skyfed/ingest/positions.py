"""Source positions as JSON, the form in which they are committed with the data."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from skyfed.connectors.base import ReadPosition

_TYPES = {"datetime": datetime.fromisoformat, "date": date.fromisoformat, "Decimal": Decimal}


def position_from_json(data: dict[str, Any] | None) -> ReadPosition | None:
    """The inverse of ReadPosition.to_json."""
    if not data:
        return None
    value = data.get("cursor_value")
    if isinstance(value, dict) and "type" in value:
        value = _TYPES[value["type"]](value["value"])
    return ReadPosition(cursor_value=value, objects=dict(data.get("objects") or {}))


def position_to_json(position: ReadPosition) -> dict[str, Any]:
    """A JSON-able dict that position_from_json turns back into the same position."""
    value = position.cursor_value
    if isinstance(value, (datetime, date)):
        value = {"type": type(value).__name__, "value": value.isoformat()}
    elif isinstance(value, Decimal):
        value = {"type": "Decimal", "value": str(value)}
    elif hasattr(value, "item"):  # numpy scalar
        value = value.item()
    return {"cursor_value": value, "objects": dict(sorted(position.objects.items()))}
