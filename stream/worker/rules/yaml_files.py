"""YAML files people write (the playbook, the audiences): loading, and the line of an entry."""

from __future__ import annotations

from typing import Any

import yaml


def load_yaml(text: str, source: str, error: type[Exception]) -> Any:
    """The document (``{}`` when empty), or ``error`` with the line and what is wrong."""
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise error(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


def line_of(text: str, loc: tuple[int | str, ...]) -> int | None:
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
