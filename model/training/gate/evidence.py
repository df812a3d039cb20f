"""Paired evidence: how much better or worse one model is than another on the same rows. Pure.

One F1 at one cutoff is a few hundred high_value rows, where a point moves by
several hundredths from sampling alone (the bootstrap's own interval is about
±0.07). So the gate compares two models by the *difference* of their metric on
the same users, resampled together: a bootstrap over users (each row is one
user at the validation cutoff), with Poisson(1) weights, which resample the
same users for both models in each draw. The interval of the difference is
much narrower than either model's own interval, because both models are right
and wrong on mostly the same users.

Rows at several cutoffs hold the same user more than once, and those rows are
not independent: ``groups`` names each row's user, and a draw weighs all of a
user's rows together (a cluster bootstrap), so three cutoffs do not pass for
three times the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: The two-sided level of the intervals the gate decides on.
LEVEL = 0.90
DRAWS = 2000
#: Draws per chunk: a (chunk, rows) weight matrix at a time, not (DRAWS, rows).
_CHUNK = 250


def f1(pred: np.ndarray, y: np.ndarray, k: int) -> float:
    said, truth = pred == k, y == k
    tp = float((said & truth).sum())
    return 2 * tp / max(float(said.sum() + truth.sum()), 1.0)


def paired_f1_difference(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    k: int,
    *,
    level: float = LEVEL,
    draws: int = DRAWS,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """F1 of class ``k``: model a minus model b on the same rows, with a paired
    bootstrap interval at ``level`` (``low``, ``high``). ``groups``: each row's
    user as an integer (rows of one user are resampled together)."""
    y, pred_a, pred_b = (np.asarray(v) for v in (y, pred_a, pred_b))
    if groups is None:
        groups = np.arange(len(y))
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    truth = y == k
    # Per row, what it adds to each model's true positives, and to F1's
    # denominator (2 tp + fp + fn = said + truth).
    per_row = np.stack(
        [
            (pred_a == k) & truth,  # tp a
            (pred_b == k) & truth,  # tp b
            (pred_a == k).astype(np.float64) + truth,  # denominator a
            (pred_b == k).astype(np.float64) + truth,  # denominator b
        ],
        axis=1,
    ).astype(np.float64)
    # A draw weighs a user's rows alike, so their sums per user are all it needs.
    per_user = np.zeros((n_groups, 4))
    np.add.at(per_user, codes, per_row)
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, draws, _CHUNK):
        w = rng.poisson(1.0, size=(min(_CHUNK, draws - start), n_groups)).astype(np.float64)
        s = w @ per_user
        diffs.append(
            2 * s[:, 0] / np.maximum(s[:, 2], 1.0) - 2 * s[:, 1] / np.maximum(s[:, 3], 1.0)
        )
    d = np.concatenate(diffs) if diffs else np.zeros(1)
    tail = (1.0 - level) / 2
    low, high = np.quantile(d, [tail, 1.0 - tail])
    return {
        "difference": round(f1(pred_a, y, k) - f1(pred_b, y, k), 4),
        "low": round(float(low), 4),
        "high": round(float(high), 4),
        "level": level,
        "rows": len(y),
        "users": n_groups,
        "support": int(truth.sum()),
    }


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the observed class (probabilities floored at 1e-9)."""
    p = np.asarray(probs)[np.arange(len(y)), np.asarray(y)]
    return float(-np.log(np.maximum(p, 1e-9)).mean()) if len(y) else 0.0


def per_class_differences(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    classes: Sequence[str],
    **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """:func:`paired_f1_difference` for every class with support in ``y``."""
    return {
        c: paired_f1_difference(y, pred_a, pred_b, k, **kwargs)
        for k, c in enumerate(classes)
        if (np.asarray(y) == k).any()
    }
