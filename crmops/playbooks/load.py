"""Load and validate a playbook completely before anything runs.

Structure (pydantic), step types, unique names, and every template reference are
checked here, each failure one PlaybookInvalid line naming file and line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from crmops.errors import PlaybookInvalid
from crmops.playbooks.model import SMOKE_TYPES, STEP_TYPES, Playbook, Step
from crmops.playbooks.source import LineMap, Loc, load_yaml
from crmops.playbooks.template import ROOTS, references

_UNION_BRANCHES = {"str", "int", "float", "bool", "list[str]", "list[int]", "dict[str,str]", "dict[str,any]"}
RUN_FIELDS = ("id", "started_at", "dry_run")
PLAYBOOK_FIELDS = ("name", "from_version", "to_version")


def load_playbook(path: str | Path) -> Playbook:
    """The validated playbook at path; PlaybookInvalid (exit 52) naming file and line otherwise."""
    path = Path(path)
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise lines.error((), "expected a mapping (name, from_version, to_version, stages …) at the top level")
    _check_step_types(data, lines)
    try:
        playbook = Playbook.model_validate(data)
    except ValidationError as e:
        raise _explain(e, lines) from None
    _assign_ids(playbook)
    _check_names(playbook, data, lines)
    _check_templates(playbook, data, lines)
    playbook.source = str(path)
    playbook.digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return playbook


def chain(playbooks: list[Playbook]) -> Playbook:
    """Several playbooks as one run through intermediate versions, a checkpoint at each hop."""
    if len(playbooks) == 1:
        return playbooks[0]
    for a, b in zip(playbooks, playbooks[1:], strict=False):
        if a.to_version != b.from_version:
            raise PlaybookInvalid(f"{b.source}: starts from {b.from_version}, but {a.source} ends at "
                                  f"{a.to_version}: the chain has a gap")
    seen: dict[str, str] = {}
    stages = []
    for pb in playbooks:
        for _, _, step in pb.all_steps():
            if step.id in seen and seen[step.id] != pb.source:
                raise PlaybookInvalid(f"{pb.source}: step id {step.id!r} is also used in {seen[step.id]}; "
                                      "ids must be unique along a chain")
            seen[step.id or ""] = pb.source
        for i, stage in enumerate(pb.stages):
            copy = stage.model_copy()
            if i == len(pb.stages) - 1 and pb is not playbooks[-1] and not copy.checkpoint:
                copy.checkpoint = pb.to_version
            stages.append(copy)
    names = [s.name for s in stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlaybookInvalid(f"stage name {dupes[0]!r} appears in more than one playbook of the chain")
    first, last = playbooks[0], playbooks[-1]
    merged_vars: dict[str, Any] = {}
    for pb in playbooks:
        merged_vars.update(pb.vars)
    combined = first.model_copy(update={
        "name": " -> ".join(pb.name for pb in playbooks), "to_version": last.to_version, "stages": stages,
        "vars": merged_vars, "smoke_tests": [s for pb in playbooks for s in pb.smoke_tests],
        "window": first.window, "post_checks": last.post_checks, "on_failure": last.on_failure})
    combined.source = " + ".join(pb.source for pb in playbooks)
    combined.digest = "sha256:" + hashlib.sha256("".join(pb.digest for pb in playbooks).encode()).hexdigest()
    return combined


def _step_lists(data: dict[str, Any]) -> list[tuple[Loc, list[Any]]]:
    out: list[tuple[Loc, list[Any]]] = []
    for i, stage in enumerate(data.get("stages") or []):
        if isinstance(stage, dict):
            for key in ("steps", "rollback"):
                if isinstance(stage.get(key), list):
                    out.append((("stages", i, key), stage[key]))
    if isinstance(data.get("smoke_tests"), list):
        out.append((("smoke_tests",), data["smoke_tests"]))
    return out


def _check_step_types(data: dict[str, Any], lines: LineMap) -> None:
    """Unknown step types get their own message (pydantic's union error names every type)."""
    for loc, steps in _step_lists(data):
        for j, step in enumerate(steps):
            if not isinstance(step, dict):
                raise lines.error((*loc, j), "a step is a mapping with a type: key")
            kind = step.get("type")
            allowed = SMOKE_TYPES if loc == ("smoke_tests",) else tuple(STEP_TYPES)
            if kind is None:
                raise lines.error((*loc, j), f"step has no type: (one of {', '.join(allowed)})")
            if kind not in allowed:
                what = "smoke test type" if loc == ("smoke_tests",) else "step type"
                raise lines.error((*loc, j, "type"), f"unknown {what} {kind!r} (known: {', '.join(allowed)})")


def _explain(err: ValidationError, lines: LineMap) -> PlaybookInvalid:
    """The first mistake as the error's one line; every mistake, each with its line, in its report."""
    every = [_mistake(e, lines) for e in err.errors()]
    more = f" (+{len(every) - 1} more)" if len(every) > 1 else ""
    out = PlaybookInvalid(every[0].message + more, hint=every[0].hint)
    out.report = {"ok": False, "mistakes": [m.message for m in every]}  # type: ignore[attr-defined]
    return out


def _mistake(first: Any, lines: LineMap) -> PlaybookInvalid:
    loc: list[str | int] = []
    for i, part in enumerate(first["loc"]):
        # a tagged union puts the step type into the path after the list index: drop it
        if isinstance(part, str) and part in STEP_TYPES and i > 0 and isinstance(first["loc"][i - 1], int):
            continue
        if isinstance(part, str) and part in _UNION_BRANCHES:  # str | list[str]: pydantic names the branch
            continue
        loc.append(part)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; docs/PLAYBOOKS.md lists every key)"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif "input" in first and not isinstance(first["input"], dict | list):
        msg = f"{msg}, got {first['input']!r}"
    return lines.error(tuple(loc), msg)


def _assign_ids(playbook: Playbook) -> None:
    for stage in playbook.stages:
        for i, step in enumerate(stage.steps, start=1):
            step.id = step.id or f"{stage.name}-{i}"
        for i, step in enumerate(stage.rollback, start=1):
            step.id = step.id or f"{stage.name}-rollback-{i}"
    for i, step in enumerate(playbook.smoke_tests, start=1):
        step.id = step.id or f"smoke-{i}"


def _locations(playbook: Playbook) -> list[tuple[Loc, Step]]:
    out: list[tuple[Loc, Step]] = []
    for i, stage in enumerate(playbook.stages):
        out += [(("stages", i, "steps", j), s) for j, s in enumerate(stage.steps)]
        out += [(("stages", i, "rollback", j), s) for j, s in enumerate(stage.rollback)]
    out += [(("smoke_tests", j), s) for j, s in enumerate(playbook.smoke_tests)]
    return out


def _check_names(playbook: Playbook, data: dict[str, Any], lines: LineMap) -> None:
    seen: set[str] = set()
    for i, stage in enumerate(playbook.stages):
        if stage.name in seen:
            raise lines.error(("stages", i, "name"), f"stage name {stage.name!r} is used twice")
        seen.add(stage.name)
    ids: set[str] = set()
    for loc, step in _locations(playbook):
        if step.id in ids:
            raise lines.error((*loc, "id"), f"step id {step.id!r} is used twice")
        ids.add(step.id or "")


def _check_templates(playbook: Playbook, data: dict[str, Any], lines: LineMap) -> None:
    """Every {{ ref }} must name a variable, a run/playbook field, or an output of a step that runs before it."""
    main_before: dict[str, type[Step]] = {}  # steps of earlier stages and earlier in this stage
    for i, stage in enumerate(playbook.stages):
        for j, step in enumerate(stage.steps):
            _check_refs(playbook, data, lines, ("stages", i, "steps", j), main_before)
            main_before[step.id or ""] = type(step)
        visible = dict(main_before)  # rollback sees its stage and every earlier one
        for j, step in enumerate(stage.rollback):
            _check_refs(playbook, data, lines, ("stages", i, "rollback", j), visible)
            visible[step.id or ""] = type(step)
    for j, _ in enumerate(playbook.smoke_tests):
        _check_refs(playbook, data, lines, ("smoke_tests", j), main_before)
    if playbook.rehearsal is not None and isinstance(data.get("rehearsal"), dict):
        _check_refs(playbook, data, lines, ("rehearsal",), {})  # vars only: it is read before any step runs


def _raw(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data


def _check_refs(playbook: Playbook, data: dict[str, Any], lines: LineMap, loc: Loc,
                visible: dict[str, type[Step]]) -> None:
    for where, ref in references(_raw(data, loc)):
        at = (*loc, *where)
        root, *rest = ref.split(".")
        if root not in ROOTS:
            raise lines.error(at, f"{{{{ {ref} }}}}: unknown name {root!r} (use vars., steps., run. or playbook.)")
        if root == "vars":
            if len(rest) != 1 or rest[0] not in playbook.vars:
                known = ", ".join(sorted(playbook.vars)) or "none defined"
                raise lines.error(at, f"{{{{ {ref} }}}}: no such variable (vars: {known})")
        elif root == "run":
            if len(rest) != 1 or rest[0] not in RUN_FIELDS:
                raise lines.error(at, f"{{{{ {ref} }}}}: run has {', '.join(RUN_FIELDS)}")
        elif root == "playbook":
            if len(rest) != 1 or rest[0] not in PLAYBOOK_FIELDS:
                raise lines.error(at, f"{{{{ {ref} }}}}: playbook has {', '.join(PLAYBOOK_FIELDS)}")
        else:
            if len(rest) != 2:
                raise lines.error(at, f"{{{{ {ref} }}}}: write steps.<step id>.<output>")
            step_id, output = rest
            kind = visible.get(step_id)
            if kind is None:
                raise lines.error(at, f"{{{{ {ref} }}}}: no step {step_id!r} runs before this one")
            if output not in kind.OUTPUTS:
                raise lines.error(at, f"{{{{ {ref} }}}}: a {kind.model_fields['type'].annotation.__args__[0]} "
                                      f"step's outputs are {', '.join(kind.OUTPUTS) or 'none'}")
