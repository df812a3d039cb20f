"""The house: what a maintainer relies on when reading the code and the docs.

- every relative link in the README and docs/ resolves;
- the README stays a front door (at most 250 lines);
- no module in stream/ or model/ is over 600 lines;
- the pure core (stream/core) imports neither the worker nor training, and
  model/ takes only the core from stream/;
- the worker's imports load no development tool (bench, demo, embedded
  servers) and no training module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "deploy" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        if not (doc.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert broken == []


def test_the_readme_is_a_front_door() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_no_module_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in [*REPO.glob("stream/**/*.py"), *REPO.glob("model/**/*.py")]
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert long == {}


def test_the_core_imports_only_the_core_and_model_only_the_core_of_stream() -> None:
    for path in (REPO / "stream" / "core").glob("*.py"):
        outside = {m for m in _imports(path) if m.startswith(("stream", "model"))} - {
            m for m in _imports(path) if m.startswith("stream.core")
        }
        assert outside == set(), path.name
    for path in (REPO / "model").glob("**/*.py"):
        from_stream = {m for m in _imports(path) if m.split(".")[0] == "stream"}
        assert all(m.startswith("stream.core") for m in from_stream), (path.name, from_stream)


def test_the_worker_loads_no_development_tool_and_no_training() -> None:
    code = "import sys, stream.worker; print(' '.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.split()
    )
    unwanted = {
        m
        for m in loaded
        if m.startswith(("stream.bench", "stream.demo", "stream.embedded", "stream.generate"))
        or m in {"model.train", "model.dataset", "model.gate", "model.network", "tensorflow"}
    }
    assert unwanted == set()
    assert "stream.pipeline" in loaded  # it did import the worker
