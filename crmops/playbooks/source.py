"""Read a playbook's YAML keeping the line of every key, so each error can name file and line.

Administrators edit playbooks by hand under time pressure; "democrm.yaml line 42: unknown
step type 'shel'" is fixable at a glance, a pydantic location path is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from crmops.config import yaml_problem
from crmops.errors import PlaybookInvalid

#: a location inside the document: keys and list indexes from the top
Loc = tuple[str | int, ...]


class LineMap:
    """Lines of the document's nodes by location; the nearest known ancestor answers for the rest."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {}

    def line(self, loc: Loc) -> int | None:
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get(())

    def error(self, loc: Loc, message: str) -> PlaybookInvalid:
        """PlaybookInvalid naming file, line and key path."""
        line = self.line(loc)
        where = f"{self.file}" + (f" line {line}" if line else "")
        key = ".".join(str(p) for p in loc)
        return PlaybookInvalid(f"{where}: {key + ': ' if key else ''}{message}")


def _build(node: yaml.Node, loc: Loc, lines: LineMap) -> Any:
    lines.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if not isinstance(key, str):
                raise lines.error(loc, f"line {key_node.start_mark.line + 1}: keys must be text, got {key!r}")
            if key in out:
                raise PlaybookInvalid(f"{lines.file} line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            lines.lines[(*loc, key)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, (*loc, key), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*loc, i), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)


def load_yaml(path: Path) -> tuple[Any, LineMap]:
    """The document as plain data plus its LineMap; YAML syntax errors as PlaybookInvalid with the line."""
    lines = LineMap(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PlaybookInvalid(f"{path}: cannot read the playbook: {e.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        where, problem = yaml_problem(e)
        raise PlaybookInvalid(f"{path}{where}: {problem}") from None
    if node is None:
        raise PlaybookInvalid(f"{path}: the playbook is empty")
    return _build(node, (), lines), lines
