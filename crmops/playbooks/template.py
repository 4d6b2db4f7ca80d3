"""`{{ name.path }}` templating for playbook values: variables and results of earlier steps.

Deliberately tiny (no expressions, no filters): a playbook is read by auditors, and every
reference can be checked before anything runs, so a typo stops the upgrade at validation
rather than half-way through the maintenance window.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

REFERENCE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")
#: roots a template may start from
ROOTS = ("vars", "steps", "run", "playbook")


class TemplateError(Exception):
    """A reference that cannot be resolved; the message names it."""


class Pending:
    """A value only the real run will know (a dry run shows it as <steps.backup.snapshot_id>)."""

    def __init__(self, ref: str) -> None:
        self.ref = ref

    def __str__(self) -> str:
        return f"<{self.ref}>"

    def __repr__(self) -> str:
        return f"Pending({self.ref!r})"


def references(value: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(location inside value, dotted reference) for every {{ ... }} in strings, lists and mappings."""
    if isinstance(value, str):
        for m in REFERENCE.finditer(value):
            yield (), m.group(1)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            for loc, ref in references(v):
                yield (k, *loc), ref
    elif isinstance(value, list):
        for i, v in enumerate(value):
            for loc, ref in references(v):
                yield (i, *loc), ref


def lookup(ref: str, context: Mapping[str, Any], *, pending_ok: bool = False) -> Any:
    node: Any = context
    parts = ref.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            continue
        if pending_ok:
            return Pending(ref)
        known = ".".join(parts[:i]) or "the template"
        raise TemplateError(f"{{{{ {ref} }}}}: {known} has no {part!r} (yet)")
    return node


def render(value: Any, context: Mapping[str, Any], *, pending_ok: bool = False) -> Any:
    """value with every reference filled in; a string that is one whole reference keeps the value's type."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value.strip())
        if whole:
            return lookup(whole.group(1), context, pending_ok=pending_ok)
        return REFERENCE.sub(lambda m: str(lookup(m.group(1), context, pending_ok=pending_ok)), value)
    if isinstance(value, Mapping):
        return {k: render(v, context, pending_ok=pending_ok) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context, pending_ok=pending_ok) for v in value]
    return value
