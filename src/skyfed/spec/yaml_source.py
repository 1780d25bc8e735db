"""YAML with positions: the data plus the line and column of every key and item.

Errors are only useful when they point at the line to fix, so the loader keeps a
map from each key path to where it was written, and refuses duplicate keys
(which plain YAML loaders silently resolve to the last one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class YamlDocument:
    file: str
    data: Any
    positions: dict[Path_, Position] = field(default_factory=dict)
    duplicates: list[tuple[Path_, Position]] = field(default_factory=list)

    def position(self, path: Path_) -> Position | None:
        """Where `path` was written, or its nearest written ancestor."""
        for n in range(len(path), -1, -1):
            pos = self.positions.get(tuple(path[:n]))
            if pos is not None:
                return pos
        return None


class YamlSyntaxError(Exception):
    def __init__(self, file: str, message: str, position: Position | None):
        super().__init__(message)
        self.file = file
        self.message = message
        self.position = position


def _mark(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def parse_yaml(text: str, file: str = "<string>") -> YamlDocument:
    """Parse one YAML document into data with positions."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return YamlDocument(file, None)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(mark.line + 1, mark.column + 1) if mark else None
        raise YamlSyntaxError(file, f"{exc.problem or exc.context}", pos) from None
    finally:
        loader.dispose()
    doc = YamlDocument(file, data)
    doc.positions[()] = _mark(root)

    def walk(node: yaml.Node, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node) if not isinstance(key_node, yaml.ScalarNode) else _scalar_key(key_node)
                child = path + (key,)
                if key in seen:
                    doc.duplicates.append((child, _mark(key_node)))
                seen.add(key)
                doc.positions[child] = _mark(key_node)
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                doc.positions[path + (i,)] = _mark(item)
                walk(item, path + (i,))

    walk(root, ())
    return doc


def _scalar_key(node: yaml.ScalarNode) -> Any:
    # Construct the key as the SafeLoader would, so paths match the data.
    return yaml.SafeLoader("").construct_object(node) if node.tag != "tag:yaml.org,2002:str" else node.value


def read_yaml(path: Path) -> YamlDocument:
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))
