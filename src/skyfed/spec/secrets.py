"""Secrets appear in a spec only as references to environment variables.

A spec is committed to git and shown in logs; a password written inline would
leak both ways. A SecretRef keeps the variable's name and reads its value only
when a connector asks for it.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

from skyfed.errors import SkyfedError

# Keys whose values are secrets wherever they appear in a spec.
SECRET_KEYS = frozenset({"password", "credentials_json", "token", "secret", "api_key", "private_key"})
ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class SecretRef:
    """A secret held in environment variable `name`."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def reveal(self) -> str:
        """The secret's value; a clear error when the variable is not set."""
        value = os.environ.get(self.name)
        if value is None:
            raise SkyfedError(
                f"environment variable {self.name} is not set, and the spec takes a secret from it",
                hint=f"export {self.name}=... (for the local federation, run `skyfed up`)",
            )
        return value

    def __repr__(self) -> str:
        return f"SecretRef(${{{self.name}}})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretRef) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    @classmethod
    def _validate(cls, value: Any) -> SecretRef:
        if isinstance(value, SecretRef):
            return value
        if isinstance(value, str):
            m = ENV_REF.match(value.strip())
            if m:
                return cls(m.group(1))
        raise ValueError("secret written inline; reference an environment variable instead, e.g. '${MY_PASSWORD}'")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: f"${{{v.name}}}"),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {
            "type": "string",
            "pattern": ENV_REF.pattern,
            "description": "a secret, only as a reference to an environment variable: ${VAR}",
        }
