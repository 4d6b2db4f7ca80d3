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
    """The validated playbook at path; PlaybookInvalid (exit 52) naming file and line otherwise.

    Every mistake is found in one run: a step of an unknown type or with a wrong key is set aside
    so the rest (names, every {{ reference }}) is still checked, and all are listed in the report.
    """
    path = Path(path)
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise lines.error((), "expected a mapping (name, from_version, to_version, stages …) at the top level")
    mistakes: list[PlaybookInvalid] = []
    checked = _check_step_types(data, lines, mistakes)
    playbook = None
    for _ in range(2):  # once as written; once more without what pydantic refused, to check the rest
        try:
            playbook = Playbook.model_validate(checked)
            break
        except ValidationError as e:
            mistakes += [_mistake(err, lines) for err in e.errors() if not _seen(err, mistakes, lines)]
            repaired = _without(checked, [tuple(err["loc"]) for err in e.errors()])
            if repaired is None:
                break
            checked = repaired
    if playbook is not None:
        _assign_ids(playbook)
        _check_names(playbook, lines, mistakes)
        _check_templates(playbook, checked, lines, mistakes)
    if mistakes:
        raise _all(mistakes)
    assert playbook is not None
    playbook.source = str(path)
    playbook.digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return playbook


def _seen(err: Any, mistakes: list[PlaybookInvalid], lines: LineMap) -> bool:
    return _mistake(err, lines).message in {m.message for m in mistakes}


def _all(mistakes: list[PlaybookInvalid]) -> PlaybookInvalid:
    """The first mistake as the error's one line; every mistake, each with its line, in its report."""
    more = f" (+{len(mistakes) - 1} more)" if len(mistakes) > 1 else ""
    out = PlaybookInvalid(mistakes[0].message + more, hint=mistakes[0].hint)
    out.report = {"ok": False, "mistakes": [m.message for m in mistakes]}  # type: ignore[attr-defined]
    return out


def _without(data: dict[str, Any], locs: list[tuple[Any, ...]]) -> dict[str, Any] | None:
    """data without the steps (or top-level keys) the locations point into; None where that cannot be done."""
    import copy

    out = copy.deepcopy(data)
    drop_steps: set[tuple[Any, ...]] = set()
    for loc in locs:
        step = _step_of(loc)
        if step is not None:
            drop_steps.add(step)
        elif len(loc) == 1 and isinstance(loc[0], str) and loc[0] in out and loc[0] not in PLAYBOOK_FIELDS:
            del out[loc[0]]
        else:
            return None
    for step in sorted(drop_steps, key=lambda s: s[-1], reverse=True):
        _raw(out, step[:-1]).pop(step[-1])
    return out


def _step_of(loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if len(loc) >= 4 and loc[0] == "stages" and loc[2] in ("steps", "rollback") and isinstance(loc[3], int):
        return loc[:4]
    if len(loc) >= 2 and loc[0] == "smoke_tests" and isinstance(loc[1], int):
        return loc[:2]
    return None


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


def _check_step_types(data: dict[str, Any], lines: LineMap, mistakes: list[PlaybookInvalid]) -> dict[str, Any]:
    """Unknown step types get their own message (pydantic's union error names every type); the data
    without those steps is returned, so the rest is still checked."""
    bad: list[tuple[Any, ...]] = []
    for loc, steps in _step_lists(data):
        for j, step in enumerate(steps):
            if not isinstance(step, dict):
                mistakes.append(lines.error((*loc, j), "a step is a mapping with a type: key"))
                bad.append((*loc, j))
                continue
            kind = step.get("type")
            allowed = SMOKE_TYPES if loc == ("smoke_tests",) else tuple(STEP_TYPES)
            if kind is None:
                mistakes.append(lines.error((*loc, j), f"step has no type: (one of {', '.join(allowed)})"))
                bad.append((*loc, j))
            elif kind not in allowed:
                what = "smoke test type" if loc == ("smoke_tests",) else "step type"
                mistakes.append(lines.error((*loc, j, "type"),
                                            f"unknown {what} {kind!r} (known: {', '.join(allowed)})"))
                bad.append((*loc, j))
    return _without(data, bad) or data if bad else data


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


def _check_names(playbook: Playbook, lines: LineMap, mistakes: list[PlaybookInvalid]) -> None:
    seen: set[str] = set()
    for i, stage in enumerate(playbook.stages):
        if stage.name in seen:
            mistakes.append(lines.error(("stages", i, "name"), f"stage name {stage.name!r} is used twice"))
        seen.add(stage.name)
    ids: set[str] = set()
    for loc, step in _locations(playbook):
        if step.id in ids:
            mistakes.append(lines.error((*loc, "id"), f"step id {step.id!r} is used twice"))
        ids.add(step.id or "")


def _check_templates(playbook: Playbook, data: dict[str, Any], lines: LineMap,
                     mistakes: list[PlaybookInvalid]) -> None:
    """Every {{ ref }} must name a variable, a run/playbook field, or an output of a step that runs before it."""
    main_before: dict[str, type[Step]] = {}  # steps of earlier stages and earlier in this stage
    for i, stage in enumerate(playbook.stages):
        for j, step in enumerate(stage.steps):
            _check_refs(playbook, data, lines, ("stages", i, "steps", j), main_before, mistakes)
            main_before[step.id or ""] = type(step)
        visible = dict(main_before)  # rollback sees its stage and every earlier one
        for j, step in enumerate(stage.rollback):
            _check_refs(playbook, data, lines, ("stages", i, "rollback", j), visible, mistakes)
            visible[step.id or ""] = type(step)
    for j, _ in enumerate(playbook.smoke_tests):
        _check_refs(playbook, data, lines, ("smoke_tests", j), main_before, mistakes)
    if playbook.rehearsal is not None and isinstance(data.get("rehearsal"), dict):
        _check_refs(playbook, data, lines, ("rehearsal",), {}, mistakes)  # vars only: read before any step runs


def _raw(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data


def _check_refs(playbook: Playbook, data: dict[str, Any], lines: LineMap, loc: Loc,
                visible: dict[str, type[Step]], mistakes: list[PlaybookInvalid]) -> None:
    for where, ref in references(_raw(data, loc)):
        problem = _ref_problem(playbook, ref, visible)
        if problem:
            mistakes.append(lines.error((*loc, *where), problem))


def _ref_problem(playbook: Playbook, ref: str, visible: dict[str, type[Step]]) -> str | None:
    """What is wrong with one {{ ref }}, or None."""
    root, *rest = ref.split(".")
    if root not in ROOTS:
        return f"{{{{ {ref} }}}}: unknown name {root!r} (use vars., steps., run. or playbook.)"
    if root == "vars":
        if len(rest) != 1 or rest[0] not in playbook.vars:
            known = ", ".join(sorted(playbook.vars)) or "none defined"
            return f"{{{{ {ref} }}}}: no such variable (vars: {known})"
        return None
    if root == "run":
        return None if len(rest) == 1 and rest[0] in RUN_FIELDS else f"{{{{ {ref} }}}}: run has {', '.join(RUN_FIELDS)}"
    if root == "playbook":
        return None if len(rest) == 1 and rest[0] in PLAYBOOK_FIELDS else \
            f"{{{{ {ref} }}}}: playbook has {', '.join(PLAYBOOK_FIELDS)}"
    if len(rest) != 2:
        return f"{{{{ {ref} }}}}: write steps.<step id>.<output>"
    step_id, output = rest
    kind = visible.get(step_id)
    if kind is None:
        return f"{{{{ {ref} }}}}: no step {step_id!r} runs before this one"
    if output not in kind.OUTPUTS:
        return (f"{{{{ {ref} }}}}: a {kind.model_fields['type'].annotation.__args__[0]} "
                f"step's outputs are {', '.join(kind.OUTPUTS) or 'none'}")
    return None
