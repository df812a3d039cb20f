"""The promotion gate: when may a newly trained model become current?

A candidate is promoted only if, on its temporal validation window:

* its macro-F1 beats both baselines (RFM rule, and "same segment as the last
  fully observed cutoff"): otherwise the network is not earning its keep;
* its macro-F1 is at least the serving model's on the *same rows*, minus a
  tolerance: the serving model is scored on the candidate's saved
  ``validation.npz``, so the two are compared on identical data.

Otherwise it stays a candidate, and ``gate.json`` and the report say why.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from model.evaluate import classification_report
from model.registry import MANIFEST, current_version, load_version

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    outcome: str  # "promoted" | "candidate"
    reason: str
    version: str
    candidate_f1: float
    current_f1: float | None
    baselines_f1: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome == "promoted"


def decide(
    candidate_f1: float,
    baselines_f1: dict[str, float],
    current_f1: float | None,
    tolerance: float,
) -> tuple[bool, str]:
    """Pure rule: (passes, human reason)."""
    failures = [
        f"macro-F1 {candidate_f1:.4f} does not beat the {name} baseline ({f1:.4f})"
        for name, f1 in baselines_f1.items()
        if candidate_f1 <= f1
    ]
    if current_f1 is not None and candidate_f1 < current_f1 - tolerance:
        failures.append(
            f"macro-F1 {candidate_f1:.4f} < serving model {current_f1:.4f} - tolerance {tolerance}"
        )
    if failures:
        return False, "; ".join(failures)
    against = "no serving model" if current_f1 is None else f"serving {current_f1:.4f}"
    beaten = ", ".join(f"{n} {f:.4f}" for n, f in baselines_f1.items())
    return True, f"macro-F1 {candidate_f1:.4f} beats baselines ({beaten}) and {against}"


def serving_f1(model_dir: Path, candidate_dir: Path) -> float | None:
    version = current_version(model_dir)
    if version is None or version == candidate_dir.name:
        return None
    try:
        serving = load_version(model_dir / version)
    except Exception as exc:  # an unusable serving model must not block a good candidate
        log.warning("serving model %s cannot be scored (%s)", version, exc)
        return None
    manifest = orjson.loads((candidate_dir / MANIFEST).read_bytes())
    if list(serving.classes) != list(manifest["classes"]):
        return None
    with np.load(candidate_dir / "validation.npz") as val:
        pred = serving.scorer.predict(val["x"]).argmax(axis=1)
        return float(classification_report(val["y"], pred, manifest["classes"])["macro_f1"])


def judge(model_dir: Path, candidate_dir: Path, tolerance: float = 0.01) -> Verdict:
    """Decide, and record the verdict beside the model (gate.json, manifest, report)."""
    from model.train import render_report

    manifest = orjson.loads((candidate_dir / MANIFEST).read_bytes())
    metrics = manifest["metrics"]
    baselines = {name: float(r["macro_f1"]) for name, r in metrics.get("baselines", {}).items()}
    current = serving_f1(model_dir, candidate_dir)
    ok, reason = decide(float(metrics["macro_f1"]), baselines, current, tolerance)
    verdict = Verdict(
        "promoted" if ok else "candidate",
        reason,
        candidate_dir.name,
        float(metrics["macro_f1"]),
        current,
        baselines,
    )
    record: dict[str, Any] = asdict(verdict)
    (candidate_dir / "gate.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    manifest["gate"] = record
    (candidate_dir / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    render_report(candidate_dir, gate=record)
    return verdict
