"""Find, read, interpolate and validate a platform spec, collecting every problem.

The stages are separate so that each kind of mistake gets its own precise message:
YAML syntax, duplicate keys, secrets written inline, unset variables, schema errors
(with the nearest valid key for a misspelt one), then cross-references.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from skyfed.errors import SkyfedError
from skyfed.home import state_dir
from skyfed.spec.interpolate import interpolate
from skyfed.spec.issues import SpecError, SpecIssue, dotted, nearest
from skyfed.spec.models import PlatformSpec
from skyfed.spec.secrets import SECRET_KEYS, SecretRef
from skyfed.spec.semantics import check_references
from skyfed.spec.yaml_source import YamlDocument, YamlSyntaxError, read_yaml

DEFAULT_NAMES = ("skyfed.yaml", "skyfed.yml")


def resolve_spec_path(path: str | os.PathLike[str] | None = None) -> Path:
    """--spec PATH, else $SKYFED_SPEC, else ./skyfed.yaml."""
    if path:
        candidate = Path(path)
    elif os.environ.get("SKYFED_SPEC"):
        candidate = Path(os.environ["SKYFED_SPEC"])
    else:
        found = [Path(n) for n in DEFAULT_NAMES if Path(n).exists()]
        if not found:
            raise SkyfedError(
                "no platform spec found: no --spec, no SKYFED_SPEC and no ./skyfed.yaml",
                hint="pass --spec examples/airline/skyfed.yaml, or set SKYFED_SPEC",
            )
        candidate = found[0]
    if not candidate.is_file():
        raise SkyfedError(f"platform spec {candidate} does not exist", hint="check the path given to --spec or SKYFED_SPEC")
    return candidate


def check_spec(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> tuple[PlatformSpec | None, list[SpecIssue]]:
    """Validate a spec file; returns the spec (None when invalid) and every issue found."""
    file = str(path)
    try:
        doc = read_yaml(Path(path))
    except YamlSyntaxError as exc:
        pos = exc.position
        return None, [SpecIssue(file, pos.line if pos else None, pos.column if pos else None, "(yaml)", exc.message)]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [SpecIssue(file, None, None, "(file)", f"cannot read: {exc}")]
    if env is None:
        env = dict(os.environ)
    env.setdefault("SKYFED_HOME", str(state_dir()))
    return validate_document(doc, env)


def validate_document(doc: YamlDocument, env: dict[str, str]) -> tuple[PlatformSpec | None, list[SpecIssue]]:
    issues: list[SpecIssue] = []

    def add(path: tuple[Any, ...], message: str, suggestion: str | None = None, severity: str = "error") -> None:
        pos = doc.position(path)
        issues.append(
            SpecIssue(doc.file, pos.line if pos else None, pos.column if pos else None, dotted(path), message, suggestion, severity)
        )

    if not isinstance(doc.data, dict):
        add((), "the spec must be a mapping with keys skyfed, name, regions, contracts, mappings")
        return None, issues
    for path, _ in doc.duplicates:
        add(path, "duplicate key: it is written twice and only the last one would count")
    for path, value in _secret_values(doc.data):
        try:
            SecretRef._validate(value)
        except ValueError as exc:
            add(path, str(exc))

    data, unset = interpolate(doc.data, env)
    for u in unset:
        add(u.path, f"environment variable {u.name} is not set and has no default (write ${{{u.name}:-default}})")

    try:
        spec = PlatformSpec.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            path = _data_path(data, e["loc"])
            if any(i.path == dotted(path) for i in issues):
                continue  # already reported more precisely (secret inline, unset variable)
            if e["type"] == "extra_forbidden":
                allowed = _allowed_keys(PlatformSpec, data, path[:-1])
                add(path, f"unknown key '{path[-1]}'", nearest(str(path[-1]), allowed))
            elif e["type"] == "missing":
                add(path, f"missing required key '{path[-1]}'")
            elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
                ctx = e.get("ctx") or {}
                tag = ctx.get("tag")
                expected = str(ctx.get("expected_tags", "")).replace("'", "").split(", ")
                msg = f"unknown kind '{tag}'; expected one of {', '.join(expected)}" if tag else e["msg"]
                add(path + ("kind",), msg, nearest(str(tag), expected) if tag else None)
            else:
                add(path, _message(e))
        return None, issues

    if issues:
        return None, issues
    for path, message, suggestion in check_references(spec):
        add(path, message, suggestion)
    return (None if any(i.severity == "error" for i in issues) else spec), issues


def load_spec(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> PlatformSpec:
    """The validated spec, or a SpecError carrying every problem."""
    resolved = resolve_spec_path(path)
    spec, issues = check_spec(resolved, env)
    if spec is None:
        raise SpecError(str(resolved), issues)
    return spec


# --------------------------------------------------------------------------- helpers


def _message(error: dict[str, Any]) -> str:
    msg = str(error["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if error["type"] not in ("value_error", "assertion_error") and "input" in error and not isinstance(error["input"], (dict, list)):
        msg += f" (got {error['input']!r})"
    return msg


def _secret_values(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    found: list[tuple[tuple[Any, ...], Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in SECRET_KEYS and v is not None:
                found.append((path + (k,), v))
            else:
                found.extend(_secret_values(v, path + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found.extend(_secret_values(v, path + (i,)))
    return found


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the parts of a pydantic error location that are not keys in the data
    (discriminator tags such as 'postgres', validator names)."""
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, (dict, list)):
            if isinstance(node, dict) and node.get("kind") == part:
                continue  # discriminator tag
            if isinstance(part, str) and part.startswith(("function-", "tagged-union")):
                continue
            if isinstance(node, dict):
                path.append(part)  # a missing key
                node = None
        else:
            break
    return tuple(path)


def _unwrap(tp: Any, node: Any) -> Any:
    """Strip Optional/Annotated; resolve a discriminated union by the node's `kind`."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if len(members) == 1:
                tp = members[0]
            elif models and isinstance(node, dict):
                kind = node.get("kind")
                match = [m for m in models if "kind" in m.model_fields and kind in typing.get_args(m.model_fields["kind"].annotation)]
                tp = match[0] if match else models[0]
            else:
                return tp
        else:
            return tp


def _allowed_keys(model: type[BaseModel], data: Any, path: tuple[Any, ...]) -> set[str]:
    """The keys the model at `path` accepts (field names and aliases)."""
    tp: Any = model
    node = data
    for part in path:
        tp = _unwrap(tp, node)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return set()
            tp = field.annotation
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        elif origin is list:
            tp = typing.get_args(tp)[0]
        else:
            return set()
        node = node.get(part) if isinstance(node, dict) else (node[part] if isinstance(node, list) else None)
    tp = _unwrap(tp, node)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {f.alias or n for n, f in tp.model_fields.items()}
    return set()
