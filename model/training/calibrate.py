"""Calibration and the decision offset, both fitted on the early-stopping rows. Pure NumPy + SciPy.

Consumers, rule audiences and hysteresis read the published probabilities, so
they must mean what they say: a Platt scale per head (Platt 1999; a > 0, so
every monotone direction survives) is fitted on rows neither the weights nor
the validation report see. The gate judges high_value F1, for which the best
decision is rarely the argmax of calibrated probabilities; that offset is a
decision weight (model.segments.decision_scores), kept out of the probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize

from model.segments import weighted

#: Platt scales are kept in [1/20, 20]: beyond, the rows say nothing trustworthy.
_LOG_A_BOUND = float(np.log(20.0))
#: Decision weights tried for high_value (ties keep the one nearest 1).
WEIGHT_GRID = np.round(np.exp(np.arange(-1.5, 2.0001, 0.1)), 4)


def platt(
    logit: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None
) -> tuple[float, float]:
    """(a, b) minimising the (weighted) cross-entropy of sigmoid(a * logit + b) against ``y``.

    (1, 0), i.e. no change, when the rows cannot tell (fewer than 2 of either outcome).
    """
    w = np.ones_like(y, dtype=np.float64) if weight is None else weight.astype(np.float64)
    pos, neg = float((w * y).sum()), float((w * (1 - y)).sum())
    if pos < 2 or neg < 2:
        return 1.0, 0.0

    def nll(theta: np.ndarray) -> float:
        z = np.exp(theta[0]) * logit + theta[1]
        return float((w * (np.logaddexp(0.0, z) - y * z)).sum() / w.sum())

    res = minimize(
        nll, np.zeros(2), method="L-BFGS-B", bounds=[(-_LOG_A_BOUND, _LOG_A_BOUND), (-20, 20)]
    )
    return float(np.exp(res.x[0])), float(res.x[1])


def fit_platt(
    heads: np.ndarray, *, active: np.ndarray, buy: np.ndarray, above: np.ndarray
) -> np.ndarray:
    """The (3, 2) Platt scales of :class:`model.value.ValueHead` from rows' raw heads.

    Each is fitted on the rows its probability is conditional on: activity on
    all, purchase on the active, the line on the buyers.
    """
    return np.array(
        [
            platt(heads[:, 0], active),
            platt(heads[:, 1], buy, weight=active),
            platt(heads[:, 3], above, weight=buy),
        ]
    )


def f1_of(said: np.ndarray, truth: np.ndarray) -> float:
    tp = float((said & truth).sum())
    return 2 * tp / max(float(said.sum() + truth.sum()), 1.0)


def tune_decision_weight(
    probs: np.ndarray, y: np.ndarray, classes: Sequence[str], target: str = "high_value"
) -> float:
    """The weight on ``target`` whose weighted argmax maximises its F1 on these rows."""
    if target not in classes:
        return 1.0
    k = list(classes).index(target)
    truth = y == k
    if not truth.any():
        return 1.0
    best, best_f1 = 1.0, -1.0
    for w in sorted(WEIGHT_GRID, key=lambda v: abs(np.log(v))):
        weights = np.ones(len(classes))
        weights[k] = w
        f1 = f1_of(weighted(probs, weights).argmax(axis=1) == k, truth)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(w), f1
    return best
