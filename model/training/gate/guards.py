"""The gate's comparisons beside the primary metric, each with its stated bound. Pure.

* **Guards against the incumbent** (the best of the last promoted models, on
  home ground): every class with support keeps its F1 (the low end of the
  paired interval above -:data:`SEGMENT_GUARD`), log-loss may not rise by more
  than :data:`LOG_LOSS_GUARD` nats, and the normalised Gini of predicted
  spend may not fall by more than :data:`GINI_GUARD`. A candidate that buys
  high_value F1 with ``at_risk`` is refused by the ``at_risk`` guard, and the
  check says so.
* **Baselines, row by row.** The simple rules (RFM, "previous segment") are
  compared with the candidate on the same users: the candidate passes when it
  trails the rule by at most the gate's tolerance and the paired interval
  does not show it worse (its high end above 0). A point comparison of two
  F1s a few hundredths apart on a few hundred rows is a coin toss (one
  training recipe's spread alone is about 0.02): it refused a candidate at
  0.378 against 0.380, with an interval of the difference of about ±0.03.
  The CLV reference keeps its margin (:data:`REFERENCE_MARGIN`, point): CLV
  is the field's bar but not a segment model this service serves, so
  refusing a candidate that merely trails it would leave users on an older
  model worse than both. Its interval is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from model.training.gate.evidence import LEVEL, f1, log_loss, per_class_differences
from model.training.ranking import normalised_gini

#: Baselines the candidate must match (within REFERENCE_MARGIN) rather than beat.
REFERENCE_BASELINES = frozenset({"clv"})
REFERENCE_MARGIN = 0.05
#: Guards against the incumbent: per-class F1 (low end of the paired interval),
#: log-loss (nats) and the normalised Gini of predicted spend.
SEGMENT_GUARD = 0.05
LOG_LOSS_GUARD = 0.02
GINI_GUARD = 0.03


def _interval(ev: dict[str, Any] | None) -> str:
    if ev is None:
        return ""
    return (
        f" (difference {ev['difference']:+.4f}, {ev['level']:.0%} paired interval "
        f"[{ev['low']:+.4f}, {ev['high']:+.4f}] on {ev['rows']} rows)"
    )


def per_cutoff(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, k: int, cutoffs: np.ndarray
) -> list[dict[str, Any]]:
    """Class ``k``'s F1 of models a and b at each cutoff, for the record."""
    out = []
    for c in np.unique(cutoffs):
        m = cutoffs == c
        a, b = f1(pred_a[m], y[m], k), f1(pred_b[m], y[m], k)
        out.append(
            {
                "cutoff_ms": int(c),
                "rows": int(m.sum()),
                "candidate": round(a, 4),
                "incumbent": round(b, 4),
                "difference": round(a - b, 4),
            }
        )
    return out


def baseline_checks(
    metric: str,
    candidate: float,
    baselines: dict[str, float],
    evidence: dict[str, dict[str, Any]],
    *,
    tolerance: float,
) -> list[dict[str, Any]]:
    """One check per baseline; ``evidence[name]`` is the paired interval of the
    candidate minus that baseline on the V rows, when the rows were kept."""
    checks = []
    for name, value in baselines.items():
        ev = evidence.get(name)
        if name in REFERENCE_BASELINES:
            checks.append(
                {
                    "check": f"matches {name}",
                    "passed": candidate >= value - REFERENCE_MARGIN,
                    "detail": f"{metric} {candidate:.4f} vs {name} {value:.4f}{_interval(ev)} "
                    f"(may trail by {REFERENCE_MARGIN})",
                    "interval": ev,
                }
            )
            continue
        if ev is None:  # a model written before its baselines' rows were kept
            ok, rule = candidate > value, "must beat it"
        else:
            ok = ev["difference"] >= -tolerance and ev["high"] > 0
            rule = (
                f"must trail it by at most {tolerance}, and the interval's high end must be "
                "above 0 (not shown worse)"
            )
        checks.append(
            {
                "check": f"beats {name}",
                "passed": ok,
                "detail": f"{metric} {candidate:.4f} vs {name} {value:.4f}{_interval(ev)}: {rule}",
                "interval": ev,
            }
        )
    return checks


def guard_checks(
    y: np.ndarray,
    classes: Sequence[str],
    candidate: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    incumbent: dict[str, Any],
    realised: np.ndarray | None,
    groups: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """What users read besides the primary metric, each with its bound, against the incumbent."""
    pred, probs, spend = candidate
    name = incumbent["version"]
    checks = []
    for c, d in per_class_differences(y, pred, incumbent["pred"], classes, groups=groups).items():
        checks.append(
            {
                "check": f"guard {c} F1",
                "passed": d["low"] > -SEGMENT_GUARD,
                "detail": f"{c} F1 {d['difference']:+.4f} against {name} "
                f"({LEVEL:.0%} interval [{d['low']:+.4f}, {d['high']:+.4f}] on "
                f"{d['support']} rows; its low end must be above -{SEGMENT_GUARD})",
                "interval": d,
            }
        )
    ours, theirs = log_loss(probs, y), log_loss(incumbent["probs"], y)
    checks.append(
        {
            "check": "guard log-loss",
            "passed": ours <= theirs + LOG_LOSS_GUARD,
            "detail": f"log-loss {ours:.4f} against {name} {theirs:.4f} "
            f"(may exceed it by {LOG_LOSS_GUARD})",
        }
    )
    if realised is not None and spend is not None and incumbent.get("spend") is not None:
        g_ours, g_theirs = (
            normalised_gini(spend, realised),
            normalised_gini(incumbent["spend"], realised),
        )
        if g_ours is not None and g_theirs is not None:
            checks.append(
                {
                    "check": "guard Gini",
                    "passed": g_ours >= g_theirs - GINI_GUARD,
                    "detail": f"normalised Gini of predicted spend {g_ours:.4f} against "
                    f"{name} {g_theirs:.4f} (may trail it by {GINI_GUARD})",
                }
            )
    return checks
