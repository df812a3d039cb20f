"""Which way each input may push each segment, and the weight rules that guarantee it. Pure.

The network stays the seed's MLP (standardise -> Dense(ReLU) -> Dense(softmax)),
but its weights are kept in a set where the directional expectations of
:mod:`model.training.behaviour` hold *by construction*, for every input, including
inputs far outside the training range:

* Each monotone input has an orientation (+1: more of it is more value or
  engagement; -1: more of it is less, e.g. days since the last order).
* The hidden units are split into blocks. A monotone input feeds only the
  units of its block, with weights of its orientation's sign; the free inputs
  feed every unit with any sign. So every hidden unit is non-decreasing in
  every oriented input of its block, and independent of other blocks' ones.
* Deeper hidden layers (if any) connect a block only to itself, with
  non-negative weights, which keeps that property.
* Output weights are ordered per hidden unit. For the ``value`` block
  (orders, spend, recency): ``at_risk <= every other class <= high_value``;
  for the ``engagement`` block (browsing, tenure): ``at_risk <= every other``.

Softmax then does the rest: if logit k's derivative along a direction is at
least every other logit's, P(k) cannot fall along it (dP_k = P_k (dl_k -
sum_j P_j dl_j)). Hence: an order added now never lowers P(high_value) nor
raises P(at_risk); the same history, older, never lowers P(at_risk); more
views never raise P(at_risk). Input clipping to the training range
(:class:`model.scorer.Scorer`) is itself non-decreasing, so it keeps this.
The Keras constraints that keep the weights in this set are in
:mod:`model.training.network`; ``tests/model/test_monotone.py`` checks the property on
random weights.

Why not constrain everything: a window shopper's many views must be free to
say "potential, not high_value", so browsing is only kept from pointing to
``at_risk``; ``session_count`` and ``distinct_categories`` are left free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.features import FEATURE_NAMES

VALUE = "value"
ENGAGEMENT = "engagement"
BLOCKS = (VALUE, ENGAGEMENT)

#: feature -> (block, orientation). Features not listed are free.
MONOTONE: dict[str, tuple[str, int]] = {
    "days_since_last_activity": (VALUE, -1),
    "days_since_last_order": (VALUE, -1),
    "order_count": (VALUE, +1),
    "orders_30d": (VALUE, +1),
    "orders_90d": (VALUE, +1),
    "total_spend": (VALUE, +1),
    "avg_order_value": (VALUE, +1),
    "spend_30d": (VALUE, +1),
    "spend_90d": (VALUE, +1),
    "cart_to_order": (VALUE, +1),
    "orders_per_session": (VALUE, +1),
    "return_ratio": (VALUE, -1),
    "has_ordered": (VALUE, +1),
    "orders_per_30d": (VALUE, +1),
    "spend_per_30d": (VALUE, +1),
    "tenure_days": (ENGAGEMENT, -1),
    "product_views_30d": (ENGAGEMENT, +1),
    "cart_adds_30d": (ENGAGEMENT, +1),
}

#: Share of the first hidden layer's units given to the value block.
VALUE_SHARE = 2 / 3


@dataclass(frozen=True)
class Layout:
    """Masks for one network: which weights may be non-zero, and with which sign."""

    #: (n_features,) orientation: +1 / -1 for monotone inputs, 0 for free ones
    sign: np.ndarray
    #: one (n_in, n_out) 0/1 mask per hidden layer: which connections exist
    allowed: tuple[np.ndarray, ...]
    #: (n_hidden_last,) block index of each last hidden unit
    unit_block: np.ndarray
    classes: tuple[str, ...]


def block_sizes(units: int) -> tuple[int, int]:
    value = max(1, round(units * VALUE_SHARE))
    return value, max(1, units - value)


def layout(
    hidden: Sequence[int],
    classes: Sequence[str],
    features: Sequence[str] = FEATURE_NAMES,
) -> Layout:
    sign = np.array([MONOTONE.get(f, ("", 0))[1] for f in features], dtype=np.float64)
    feature_block = [BLOCKS.index(MONOTONE[f][0]) if f in MONOTONE else -1 for f in features]
    allowed: list[np.ndarray] = []
    previous_block: np.ndarray | None = None
    unit_block = np.zeros(0, dtype=np.int64)
    for units in hidden:
        sizes = block_sizes(units)
        unit_block = np.repeat(np.arange(len(BLOCKS)), sizes)
        if previous_block is None:
            fb = np.array(feature_block)[:, None]
            mask = (fb == -1) | (fb == unit_block[None, :])
        else:
            mask = previous_block[:, None] == unit_block[None, :]
        allowed.append(mask.astype(np.float64))
        previous_block = unit_block
    return Layout(sign=sign, allowed=tuple(allowed), unit_block=unit_block, classes=tuple(classes))
