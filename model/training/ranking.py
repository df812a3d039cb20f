"""How well a model ranks customers by value, and whether its probabilities mean what they say.
Pure NumPy.

The CLV field's measures (Wang, Liu & Miao 2019; google/lifetime_value):

* **normalised Gini** of predicted against realised spend: the area between
  the cumulative-gains curve of the prediction and the diagonal, over that of
  a perfect ranking. 1 = ranks as well as hindsight, 0 = as well as chance.
* **top-share capture**: the share of realised spend held by the customers
  ranked in the top 20% by the prediction.
* **decile calibration**: customers cut into ten groups by predicted spend,
  each group's mean predicted against mean realised spend.

And for the probabilities consumers read: **ECE** (expected calibration
error, 10 equal-width bins, per class one-vs-rest) and the **Brier** score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 10


def gains_curve(predicted: np.ndarray, realised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of customers, share of realised value) as customers are taken in
    descending order of ``predicted``; ties broken by row order (stable)."""
    order = np.argsort(-np.asarray(predicted, dtype=np.float64), kind="stable")
    value = np.asarray(realised, dtype=np.float64)[order]
    total = value.sum()
    n = len(value)
    x = np.arange(n + 1) / max(n, 1)
    y = np.concatenate([[0.0], np.cumsum(value) / total]) if total > 0 else x.copy()
    return x, y


def gini(predicted: np.ndarray, realised: np.ndarray) -> float:
    """Gini of the gains curve: 2 * (area under it) - 1."""
    x, y = gains_curve(predicted, realised)
    area = float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)
    return 2.0 * area - 1.0


def normalised_gini(predicted: np.ndarray, realised: np.ndarray) -> float | None:
    """Gini of ``predicted`` over the Gini of hindsight (``realised`` itself); None
    when the realised values cannot be ranked (all equal)."""
    perfect = gini(realised, realised)
    if perfect <= 1e-12:
        return None
    return gini(predicted, realised) / perfect


def top_capture(predicted: np.ndarray, realised: np.ndarray, share: float = 0.2) -> float | None:
    """Share of realised value held by the top ``share`` of customers by ``predicted``."""
    realised = np.asarray(realised, dtype=np.float64)
    if len(realised) == 0 or realised.sum() <= 0:
        return None
    k = max(1, round(share * len(realised)))
    order = np.argsort(-np.asarray(predicted, dtype=np.float64), kind="stable")
    return float(realised[order[:k]].sum() / realised.sum())


def auc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both outcomes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    # Ties share the mean of their ranks.
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    out: np.ndarray = (sums / counts)[inverse]
    return out


def deciles(predicted: np.ndarray, realised: np.ndarray) -> list[dict[str, float]]:
    """Ten groups by predicted value, highest first: mean predicted and realised each."""
    order = np.argsort(-np.asarray(predicted, dtype=np.float64), kind="stable")
    out = []
    for i, idx in enumerate(np.array_split(order, 10)):
        if len(idx) == 0:
            continue
        out.append(
            {
                "decile": i + 1,
                "rows": len(idx),
                "predicted": float(np.mean(np.asarray(predicted)[idx])),
                "realised": float(np.mean(np.asarray(realised)[idx])),
            }
        )
    return out


def ece(probability: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the rows-weighted mean |mean p - observed rate| over
    equal-width bins of p."""
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(outcome, dtype=np.float64)
    if len(p) == 0:
        return 0.0
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += float(sel.sum()) * abs(float(p[sel].mean()) - float(y[sel].mean()))
    return total / len(p)


#: Draws of a perfectly calibrated outcome per class for the ECE noise floor.
NOISE_DRAWS = 200


#: The floor is this quantile of a calibrated model's ECE: sampling alone stays
#: under it in 9 draws of 10.
NOISE_QUANTILE = 0.9


def ece_noise_floor(probability: np.ndarray, draws: int = NOISE_DRAWS, seed: int = 0) -> float:
    """The ECE a *perfectly calibrated* model reaches on these rows by sampling alone:
    the 90th percentile of the ECE of outcomes drawn as Bernoulli(p) for each
    row's own p.

    On a few hundred rows that is several points (about 0.05 on 300 rows of
    mid-range probabilities), so a raw ECE bound would refuse a calibrated
    model for having a small validation window; on thousands it is tenths of
    a point. Seeded: the same rows give the same floor.
    """
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    if len(p) == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    null = [ece(p, rng.random(len(p)) < p) for _ in range(draws)]
    return float(np.quantile(null, NOISE_QUANTILE))


def calibration_report(
    probs: np.ndarray, y: np.ndarray, classes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per class: ECE (raw, its sampling noise floor, and beyond it), Brier, mean
    probability and observed rate, support."""
    out: dict[str, dict[str, Any]] = {}
    for k, c in enumerate(classes):
        hit = (np.asarray(y) == k).astype(np.float64)
        p = probs[:, k]
        raw = ece(p, hit)
        floor = ece_noise_floor(p)
        out[c] = {
            "support": int(hit.sum()),
            "ece": raw,
            "ece_noise_floor": floor,
            "ece_beyond_noise": max(0.0, raw - floor),
            "brier": float(np.mean((p - hit) ** 2)) if len(p) else 0.0,
            "mean_probability": float(p.mean()) if len(p) else 0.0,
            "observed": float(hit.mean()) if len(p) else 0.0,
        }
    return out


def ranking_report(
    predicted: np.ndarray, realised: np.ndarray, high_value: np.ndarray
) -> dict[str, Any]:
    """Normalised Gini, top-20% capture, high_value AUC and the decile table of one ranking."""
    return {
        "rows": len(realised),
        "normalised_gini": normalised_gini(predicted, realised),
        "top20_capture": top_capture(predicted, realised),
        "high_value_auc": auc(predicted, high_value),
        "deciles": deciles(predicted, realised),
    }
