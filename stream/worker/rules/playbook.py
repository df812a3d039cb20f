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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stream.worker.rules.yaml_files import line_of, load_yaml


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


def parse(text: str, source: str, classes: tuple[str, ...]) -> Playbook:
    raw = load_yaml(text, source, PlaybookError)
    try:
        doc = PlaybookFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:3]:
            loc = tuple("from" if p == "from_" else p for p in err["loc"])
            path = ".".join(str(p) for p in loc)
            problems.append(f"{source}:{line_of(text, loc) or '?'}: {path}: {err['msg']}")
        raise PlaybookError("; ".join(problems)) from None
    known = {*classes, "none", "*"}
    for name in doc.segments:
        if name not in classes:
            raise PlaybookError(
                f"{source}:{line_of(text, ('segments', name)) or '?'}: unknown segment {name!r}"
            )
    for i, t in enumerate(doc.transitions):
        for end in (t.from_, t.to):
            if end not in known or (end in ("none", "*") and end == t.to):
                line = line_of(text, ("transitions", i))
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
