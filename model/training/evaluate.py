"""Classification metrics, and the one primary metric the gate decides on. Pure NumPy.

A class with no rows in the window ("no support") has no F1: nothing in the
window could be found or missed. It is reported as such (``f1: None``), never
as 0, and left out of every mean; orders-only data, which cannot contain
``potential``, would otherwise cost every model a quarter of its macro-F1.

The primary metric (:data:`PRIMARY_METRIC`) is ``high_value`` F1. Why that one:

* ``high_value`` is the segment recommendation services spend on (premium
  ranking, service, offers), and the one a wrong answer costs most in;
* it is what the classic CLV model (BG/NBD + Gamma-Gamma) answers, so the
  project and the field's standard are compared on the same question;
* a support-weighted mean is dominated by the big classes (``at_risk`` and
  ``regular``), where "nothing changes" already scores well, and would
  prefer a model that never names a top customer, the very failure the gate
  must catch.

When a window has no ``high_value`` support the gate falls back to the
support-weighted F1 (:func:`primary`), and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PRIMARY_METRIC = "high_value_f1"
FALLBACK_METRIC = "weighted_f1"
METRICS = ("high_value_f1", "weighted_f1", "macro_f1", "accuracy")


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def classification_report(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro- and weighted F1, confusion.

    Means run over the classes with support in ``y_true`` only. A class without
    support has ``supported: False`` and ``None`` for recall and F1.
    """
    n = len(classes)
    m = confusion(np.asarray(y_true), np.asarray(y_pred), n)
    tp = np.diag(m).astype(float)
    pred = m.sum(axis=0).astype(float)
    true = m.sum(axis=1).astype(float)
    precision = np.divide(tp, pred, out=np.zeros(n), where=pred > 0)
    recall = np.divide(tp, true, out=np.zeros(n), where=true > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    present = true > 0
    per_class: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(classes):
        supported = bool(present[i])
        per_class[c] = {
            "precision": float(precision[i]) if pred[i] > 0 else None,
            "recall": float(recall[i]) if supported else None,
            "f1": float(f1[i]) if supported else None,
            "support": int(true[i]),
            "predicted": int(pred[i]),
            "supported": supported,
        }
    hv = per_class.get("high_value", {}).get("f1")
    return {
        "accuracy": float(tp.sum() / max(m.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "weighted_f1": float((f1 * true)[present].sum() / true.sum()) if present.any() else None,
        "high_value_f1": hv,
        "per_class": per_class,
        "no_support": [c for i, c in enumerate(classes) if not present[i]],
        "confusion": m.tolist(),
        "classes": list(classes),
        "n": int(m.sum()),
    }


def primary(report: dict[str, Any], metric: str = PRIMARY_METRIC) -> tuple[str, float]:
    """``(name, value)`` of the decision metric for this report.

    Falls back to :data:`FALLBACK_METRIC` when the chosen one is undefined
    (its class has no support), so a verdict is always made on a number.
    """
    value = report.get(metric)
    if value is None:
        metric = FALLBACK_METRIC
        value = report.get(metric)
    return metric, float(value or 0.0)


def fmt(value: float | None, digits: int = 3, missing: str = "no support") -> str:
    """A metric for people: ``missing`` (by default "no support") instead of a made-up 0."""
    return missing if value is None else f"{value:.{digits}f}"
