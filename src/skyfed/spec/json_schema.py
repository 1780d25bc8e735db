"""The JSON Schema of the platform spec, for editors (yaml-language-server) and CI.

Any scalar may also be written as an environment reference (`${VAR:-default}`),
so numbers and booleans accept that string form too.
"""

from __future__ import annotations

from typing import Any

from skyfed.spec.models import PlatformSpec

ENV_REF_PATTERN = r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$"


def spec_json_schema() -> dict[str, Any]:
    schema = PlatformSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "skyfed platform spec"

    def widen(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: widen(v) for k, v in node.items()}
            if node.get("type") in ("integer", "number", "boolean") and "anyOf" not in node:
                typed = {k: v for k, v in node.items() if k not in ("title", "description", "default")}
                rest = {k: v for k, v in node.items() if k in ("title", "description", "default")}
                return {**rest, "anyOf": [typed, {"type": "string", "pattern": ENV_REF_PATTERN}]}
            return node
        if isinstance(node, list):
            return [widen(v) for v in node]
        return node

    return widen(schema)
