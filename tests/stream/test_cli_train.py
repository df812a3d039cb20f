"""`segmenter train` via the real CLI: explicit data, real data, synthetic never over real."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from model.registry import current_version, list_versions
from tests.stream.test_cli import segmenter
from tests.stream.test_importers import RETAIL


def env(model_dir: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    # No broker answers on this port: promotion is local, announcing is skipped.
    return {
        **clean,
        "SEGMENTER_MODEL_DIR": str(model_dir),
        "SEGMENTER_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }


def test_train_without_data_refuses_in_one_line_naming_both_options(tmp_path: Path) -> None:
    for args in ((), ("--input", str(RETAIL), "--synthetic")):
        out = segmenter("train", *args, env=env(tmp_path))
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "--input" in lines[0] and "--synthetic" in lines[0], out.stderr
        assert "Traceback" not in out.stderr
    assert not tmp_path.joinpath("models").exists() and list_versions(tmp_path) == []


def test_real_purchase_log_is_judged_on_its_own_rows_and_synthetic_never_replaces_it(
    tmp_path: Path,
) -> None:
    real = segmenter(
        "train", "--input", str(RETAIL), "--format", "online-retail", "--horizon", "90d",
        "--step", "14d", "--version", "retail", "--force", env=env(tmp_path), timeout=600,
    )  # fmt: skip
    assert real.returncode == 0, real.stderr[-3000:]
    assert current_version(tmp_path) == "retail"
    gate = orjson.loads((tmp_path / "retail" / "gate.json").read_bytes())
    assert gate["primary_metric"] in ("high_value_f1", "weighted_f1")
    assert {"candidate", "rfm", "previous_segment", "clv"} <= set(gate["scores"])
    assert all(c["detail"] for c in gate["checks"])
    report = (tmp_path / "retail" / "report.md").read_text()
    for section in ("## Directional checks", "## Archetypes", "## Drift reference"):
        assert section in report
    # Orders only: nothing the model could learn about browsing is judged.
    shopper = next(a for a in gate_archetypes(tmp_path / "retail") if a["name"] == "window_shopper")
    assert not shopper["applicable"] and "clickstream" in shopper["not_judged"]

    synthetic = segmenter(
        "train", "--synthetic", "--users", "250", "--days", "300", "--populations", "1",
        "--epochs", "5", "--version", "synthetic", env=env(tmp_path), timeout=600,
    )  # fmt: skip
    assert synthetic.returncode == 0, synthetic.stderr[-3000:]
    verdict = orjson.loads((tmp_path / "synthetic" / "gate.json").read_bytes())
    assert verdict["outcome"] == "candidate"
    assert "synthetic over real" in {c["check"] for c in verdict["checks"] if not c["passed"]}
    assert current_version(tmp_path) == "retail"


def gate_archetypes(version_dir: Path) -> list[dict[str, object]]:
    manifest = orjson.loads((version_dir / "manifest.json").read_bytes())
    archetypes: list[dict[str, object]] = manifest["metrics"]["checks"]["archetypes"]
    return archetypes
