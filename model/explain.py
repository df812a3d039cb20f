"""Why a user changed segment: per-feature contributions, for a whole batch at once. Pure.

Occlusion: a feature's contribution is how much the new segment's probability
drops when that one feature is replaced by its training mean. Each changed
user's F variants go through the network together, a bounded number of users
at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from model.cadence import CADENCE_READS
from model.features import FEATURE_NAMES, LOG_MASK
from model.scorer import Scorer

#: Changed users whose variants go through the network together. The forward
#: pass holds about 32 KiB per user's variants (F rows through every layer and
#: the buy-till-you-die scores), so a backlog batch with 8,000 changes took
#: 260 MiB at once, the worker's whole RSS high-water mark. 256 users hold
#: about 8 MiB, and a row's result does not depend on the rows scored with it
#: (``Scorer.predict``), so the cut changes no output.
CHUNK_USERS = 256

#: Features whose occlusion moves one network input and nothing else: the
#: cadence does not read them (:data:`model.cadence.CADENCE_READS`).
_ALONE = np.array([j for j, name in enumerate(FEATURE_NAMES) if name not in CADENCE_READS])
_WITH_CADENCE = np.array([j for j, name in enumerate(FEATURE_NAMES) if name in CADENCE_READS])


def contributions(scorer: Scorer, x: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """(n, F): P(classes[i]) for row i, minus the same with feature j set to its mean."""
    n, f = x.shape
    out = np.empty((n, f))
    cls = np.asarray(classes, dtype=np.intp)
    for lo in range(0, n, CHUNK_USERS):
        part, part_cls = x[lo : lo + CHUNK_USERS], cls[lo : lo + CHUNK_USERS]
        rows = np.arange(len(part))
        if scorer.towers is None:
            base = scorer.predict(part)[rows, part_cls]
            out[lo : lo + len(part)] = base[:, None] - _by_predicting(
                scorer, part, part_cls, np.arange(f)
            )
        else:
            out[lo : lo + len(part)] = _occlude(scorer, part, part_cls)
    return out


def _by_predicting(
    scorer: Scorer, x: np.ndarray, cls: np.ndarray, features: np.ndarray
) -> np.ndarray:
    """(m, J): P(cls) with each of ``features`` at its mean, through the whole forward pass."""
    m, f = x.shape
    variants = np.repeat(x[:, None, :], len(features), axis=1)  # (m, J, F)
    variants[:, np.arange(len(features)), features] = scorer.mean[features]
    occluded = scorer.predict(variants.reshape(-1, f)).reshape(m, len(features), -1)
    picked: np.ndarray = occluded[np.arange(m), :, cls]
    return picked


def _occlude(scorer: Scorer, x: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Contributions for a value-head model, without recomputing what a variant shares.

    A feature the cadence does not read changes one column of the network
    input, so its variant's first layer is the row's plus that column's
    change times its weights, and its buy-till-you-die scores are the row's.
    That is most of the features, and it skips the cadence, the clipping and
    the first layer's product for them. The cadence's own features go the
    whole way.
    """
    value = scorer.towers.value  # type: ignore[union-attr]
    m, f = x.shape
    rows = np.arange(m)
    h = scorer.model_input(x)
    a = scorer.first_layer(h)
    btyd = scorer.btyd(x)
    base = value.probabilities(scorer.heads_after(a), scorer.classes, btyd)[rows, cls]
    out = np.empty((m, f))
    alone = _ALONE
    delta = scorer.standardised_mean()[alone] - h[:, alone]  # (m, J)
    a_var = a[:, None, :] + delta[:, :, None] * scorer.layers[0][0][alone]  # (m, J, units)
    btyd_var = None if btyd is None else np.repeat(btyd, len(alone), axis=0)
    occluded = value.probabilities(
        scorer.heads_after(a_var.reshape(m * len(alone), -1)), scorer.classes, btyd_var
    ).reshape(m, len(alone), -1)
    out[:, alone] = base[:, None] - occluded[rows, :, cls]
    out[:, _WITH_CADENCE] = base[:, None] - _by_predicting(scorer, x, cls, _WITH_CADENCE)
    return out


def top_reasons(
    scorer: Scorer, x: np.ndarray, classes: Sequence[int], k: int = 3
) -> list[list[dict[str, Any]]]:
    """For each row, the ``k`` features that pushed hardest toward its class."""
    contrib = contributions(scorer, x, classes)
    if contrib.shape[0] == 0:
        return []
    # The whole batch at once: per-row argsort and NumPy scalars cost more
    # than the forward pass (py-spy, on a backlog where 1 event in 10 changes).
    best = np.argsort(-contrib, axis=1)[:, :k]
    picked = np.take_along_axis(x, best, axis=1)
    # the human value, not the log1p the network sees
    human = np.where(LOG_MASK[best], np.expm1(picked), picked).tolist()
    pushed = np.take_along_axis(contrib, best, axis=1).tolist()
    return [
        [
            {"feature": FEATURE_NAMES[j], "value": round(v, 4), "contribution": round(c, 4)}
            for j, v, c in zip(js, vs, cs, strict=True)
        ]
        for js, vs, cs in zip(best.tolist(), human, pushed, strict=True)
    ]
