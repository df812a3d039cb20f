"""Baselines the model must beat, scored on the same temporal validation window.

A macro-F1 means little on its own: these two say what a hand-written rule and
"nothing changes" already get, so the report can show whether the network earns
its keep. Both are pure NumPy and see only what the model sees (training rows
for anything learned, features at T for the validation rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.features import raw_column as _raw
from model.training.dataset import Examples

#: Recency quantiles tried for the at_risk threshold, learned on training rows.
RECENCY_QUANTILES: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

#: Below this a decayed 90-day order count means "no recent orders". The counter
#: is exponentially decayed (half-life 90 days) and never reaches 0 exactly: one
#: order falls under 0.05 after about 4 half-lives (~390 days).
FREQUENCY_EPS = 0.05

# Where a rule's segment goes when the model's classes lack it: the class that
# means the nearest thing (a buyer is still a buyer; no purchase stays no purchase).
_NEAREST: dict[str, tuple[str, ...]] = {
    "high_value": ("regular",),
    "regular": ("high_value",),
    "potential": ("at_risk",),
    "at_risk": ("potential",),
}

_HIGH_VALUE, _REGULAR, _POTENTIAL, _AT_RISK = 0, 1, 2, 3
_RULE_SEGMENTS = ("high_value", "regular", "potential", "at_risk")


def _rfm(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        _raw(x, "days_since_last_activity"),
        _raw(x, "orders_90d"),
        _raw(x, "spend_90d"),
    )


def _apply_rule(
    recency: np.ndarray,
    frequency: np.ndarray,
    monetary: np.ndarray,
    r_thr: float,
    m_thr: float,
) -> np.ndarray:
    """Rule segments as indices into :data:`_RULE_SEGMENTS`; the first matching rule wins."""
    buyer = frequency > FREQUENCY_EPS
    return np.select(
        [recency > r_thr, buyer & (monetary >= m_thr), buyer],
        [_AT_RISK, _HIGH_VALUE, _REGULAR],
        default=_POTENTIAL,
    )


def _class_map(classes: Sequence[str], fallback: int) -> np.ndarray:
    """Rule segment index -> index into ``classes`` (nearest present class, else ``fallback``)."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.full(len(_RULE_SEGMENTS), fallback, dtype=np.int64)
    for k, name in enumerate(_RULE_SEGMENTS):
        for candidate in (name, *_NEAREST[name]):
            if candidate in index:
                out[k] = index[candidate]
                break
    return out


def majority_class(y: np.ndarray, n_classes: int) -> int:
    """The most frequent class in ``y`` (0 if ``y`` is empty)."""
    if len(y) == 0:
        return 0
    return int(np.bincount(y, minlength=n_classes).argmax())


def rfm_baseline(train: Examples, val: Examples, *, top_quantile: float = 0.2) -> np.ndarray:
    """Recency/frequency/monetary quantile rule; class indices for the ``val`` rows.

    Thresholds come from training rows only, so the validation window is as
    unseen by the rule as it is by the model:

    * monetary: the ``1 - top_quantile`` quantile of 90-day spend among buyers,
      mirroring the "top 20% of buyers" label;
    * recency: from :data:`RECENCY_QUANTILES` of days since last activity, the
      one whose full rule is most accurate on the training labels.
    """
    mapping = _class_map(train.classes, majority_class(train.y, len(train.classes)))
    recency, frequency, monetary = _rfm(train.x)
    buyers = monetary[frequency > FREQUENCY_EPS]
    # No buyers in training: nothing can be called high_value, so put the bar out of reach.
    m_thr = float(np.quantile(buyers, 1.0 - top_quantile)) if len(buyers) else np.inf
    r_thr = np.inf
    if len(train):
        best = -1.0
        for q in RECENCY_QUANTILES:
            candidate = float(np.quantile(recency, q))
            pred = mapping[_apply_rule(recency, frequency, monetary, candidate, m_thr)]
            accuracy = float((pred == train.y).mean())
            if accuracy > best:  # ties keep the lower quantile: the first tried
                best, r_thr = accuracy, candidate
    v_recency, v_frequency, v_monetary = _rfm(val.x)
    return mapping[_apply_rule(v_recency, v_frequency, v_monetary, r_thr, m_thr)]


def previous_segment_baseline(
    examples: Examples, val_cutoff: int, horizon_ms: int, fallback: int
) -> tuple[np.ndarray, np.ndarray]:
    """Predict each validation user's label at the latest fully observed earlier cutoff.

    "The segment at T is the segment at the previous cutoff" is only fair with a
    label known at T: a cutoff ``c`` qualifies when ``c + horizon_ms <= val_cutoff``
    (the same rule :func:`model.training.dataset.temporal_split` uses for training rows).
    Users without a row at that cutoff (first seen later) get ``fallback``.

    Returns the predictions, in the order of
    ``examples.subset(examples.cutoffs == val_cutoff)``, and a mask of the rows
    that had a previous label.
    """
    val_mask = examples.cutoffs == val_cutoff
    val_users = [u for u, m in zip(examples.users, val_mask, strict=True) if m]
    pred = np.full(len(val_users), fallback, dtype=np.int64)
    known = np.zeros(len(val_users), dtype=bool)
    eligible = np.unique(examples.cutoffs[examples.cutoffs + horizon_ms <= val_cutoff])
    if len(eligible) == 0:
        return pred, known
    previous = int(eligible.max())
    labels = {
        u: int(y)
        for u, y, c in zip(examples.users, examples.y, examples.cutoffs, strict=True)
        if c == previous
    }
    for i, user in enumerate(val_users):
        label = labels.get(user)
        if label is not None:
            pred[i] = label
            known[i] = True
    return pred, known
