"""Registry entries for gate tests: a model with set decisions, and the manifest the gate reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from model.drift import reference
from model.features import FEATURE_NAMES, SCHEMA_HASH
from model.segments import DEFAULT_SEGMENTS
from model.training.evaluate import classification_report
from tests.model.test_gate import PASSING


def describe(
    d: Path,
    y: np.ndarray,
    pred: np.ndarray,
    x: np.ndarray,
    *,
    validation_cutoff_ms: int,
    kind: str = "events",
) -> None:
    """Write ``d``'s manifest and report as training would, for decisions ``pred`` on ``(x, y)``."""
    classes = list(DEFAULT_SEGMENTS)
    metrics = classification_report(y, pred, classes)
    metrics["baselines"] = {}
    metrics["checks"] = PASSING
    manifest = {
        "version": d.name,
        "features": list(FEATURE_NAMES),
        "schema_hash": SCHEMA_HASH,
        "classes": classes,
        "training": {"source_kind": kind, "validation_cutoff_ms": validation_cutoff_ms},
        "metrics": metrics,
        "drift_reference": reference(x),
    }
    (d / "manifest.json").write_bytes(orjson.dumps(manifest))
    (d / "report.json").write_bytes(orjson.dumps({"history": {}}))
