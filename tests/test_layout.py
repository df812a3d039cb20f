"""The house: what a maintainer relies on when reading the code and the docs.

- every relative link in the README and docs/ resolves;
- the README stays a front door (at most 250 lines);
- no module in stream/ or model/ is over 600 lines;
- the pure core (stream/core) imports neither the worker nor training, and
  model/ takes only the core from stream/; serving model code never imports
  model/training;
- the worker and training never import each other, nor the CLI or the
  development tools; the parts form no import cycle;
- the worker's imports load no development tool (bench, demo, embedded
  servers) and no training module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
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


def _modules(package: str) -> dict[str, set[str]]:
    """Every module under ``package`` (dotted) -> the stream/model modules it imports."""
    root = REPO.joinpath(*package.split("."))
    out = {}
    for path in root.glob("**/*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        out[name] = {m for m in _imports(path) if m.split(".")[0] in {"stream", "model"}}
    return out


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_core_imports_only_the_core_and_model_only_the_core_of_stream() -> None:
    for name, imported in _modules("stream.core").items():
        assert {m for m in imported if not _within(m, ("stream.core",))} == set(), name
    for name, imported in _modules("model").items():
        from_stream = {m for m in imported if _within(m, ("stream",))}
        assert all(_within(m, ("stream.core",)) for m in from_stream), (name, from_stream)


def test_serving_model_code_does_not_import_training() -> None:
    serving = {n: i for n, i in _modules("model").items() if not _within(n, ("model.training",))}
    assert serving, "no serving modules found"
    for name, imported in serving.items():
        assert not any(_within(m, ("model.training",)) for m in imported), name


def test_the_worker_and_training_never_import_each_other_nor_the_edges() -> None:
    edges = ("stream.cli", "stream.devtools")
    for name, imported in _modules("stream.worker").items():
        bad = {m for m in imported if _within(m, ("stream.training", "model.training", *edges))}
        assert bad == set(), name
    for name, imported in _modules("stream.training").items():
        bad = {m for m in imported if _within(m, ("stream.worker", *edges))}
        assert bad == set(), name
    for name, imported in _modules("stream").items():
        if _within(name, ("stream.core", "stream.worker", "stream.training", *edges)):
            continue  # the shared modules at the top of stream/ import none of the parts
        bad = {m for m in imported if _within(m, ("stream.worker", "stream.training", *edges))}
        assert bad == set(), name


def test_there_is_no_import_cycle_between_the_parts() -> None:
    parts = ("stream.core", "stream.worker", "stream.training", "stream.cli", "stream.devtools")
    parts += ("model.training",)

    def part(module: str) -> str:
        for p in parts:
            if _within(module, (p,)):
                return p
        return module.split(".")[0] + " (shared)"

    graph: dict[str, set[str]] = {}
    for pkg in ("stream", "model"):
        for n, imported in _modules(pkg).items():
            graph.setdefault(part(n), set()).update(part(m) for m in imported if part(m) != part(n))
    assert len(graph) >= len(parts)
    try:
        order = list(TopologicalSorter(graph).static_order())  # raises on any cycle
    except CycleError as exc:
        pytest.fail(f"the parts import each other in a cycle: {exc.args[1]}")
    assert order.index("stream.core") < order.index("stream.worker") < order.index("stream.cli")


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
        if _within(m, ("stream.devtools", "stream.training", "stream.cli", "model.training"))
        or _within(m, ("tensorflow", "keras", "matplotlib"))
    }
    assert unwanted == set()
    assert "stream.worker.pipeline" in loaded  # it did import the worker
