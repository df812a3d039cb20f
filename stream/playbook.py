"""The playbook: segment or transition -> a suggested marketing action, from YAML.

Resolution order for a change ``from -> to``: an exact transition rule, then a
wildcard ``from: "*"`` rule, then the ``to`` segment's default. A file that is
not valid fails at start-up with its line and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    action: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_]*$")
    params: dict[str, Any] = Field(default_factory=dict)


class Transition(Action):
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)


class PlaybookFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    segments: dict[str, Action] = Field(default_factory=dict)
    transitions: list[Transition] = Field(default_factory=list)


class PlaybookError(ValueError):
    pass


@dataclass(frozen=True)
class Playbook:
    segments: dict[str, Action]
    transitions: dict[tuple[str, str], Action]

    def action_for(self, previous: str | None, segment: str) -> dict[str, Any] | None:
        for key in ((previous or "none", segment), ("*", segment)):
            rule = self.transitions.get(key)
            if rule is not None:
                return {"action": rule.action, "params": rule.params}
        default = self.segments.get(segment)
        return None if default is None else {"action": default.action, "params": default.params}


def _line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML entry at ``loc``: a mapping key's own line, a list item's line."""
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == part), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def parse(text: str, source: str, classes: tuple[str, ...]) -> Playbook:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise PlaybookError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    try:
        doc = PlaybookFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:3]:
            loc = tuple("from" if p == "from_" else p for p in err["loc"])
            path = ".".join(str(p) for p in loc)
            problems.append(f"{source}:{_line_of(text, loc) or '?'}: {path}: {err['msg']}")
        raise PlaybookError("; ".join(problems)) from None
    known = {*classes, "none", "*"}
    for name in doc.segments:
        if name not in classes:
            raise PlaybookError(
                f"{source}:{_line_of(text, ('segments', name)) or '?'}: unknown segment {name!r}"
            )
    for i, t in enumerate(doc.transitions):
        for end in (t.from_, t.to):
            if end not in known or (end in ("none", "*") and end == t.to):
                line = _line_of(text, ("transitions", i))
                raise PlaybookError(
                    f"{source}:{line or '?'}: unknown segment {end!r} in a transition"
                )
    return Playbook(
        segments=dict(doc.segments), transitions={(t.from_, t.to): t for t in doc.transitions}
    )


def default_path() -> Path:
    return Path(str(resources.files("stream").joinpath("playbook.yaml")))


def load(path: Path | None, classes: tuple[str, ...]) -> Playbook:
    path = path or default_path()
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlaybookError(f"{path}: cannot read the playbook: {exc}") from None
    return parse(text, str(path), classes)
