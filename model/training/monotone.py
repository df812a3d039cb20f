"""Which inputs each head of the network reads, and which way each may push it. Pure.

The network (:mod:`model.training.network`) has three heads, each a small
tower over the model input (the feature row plus the cadence inputs of
:mod:`model.cadence`):

* ``active``: the logit of any activity in the horizon. P(at_risk) = 1 - P(active).
* ``buy``: the logit of a purchase in the horizon, given activity.
* ``value``: log E[spend | a purchase] (the lognormal's mean, in logs).
* ``line``: the logit of spend at or above the high_value line, given a purchase.

A monotone input of a head has an orientation (+1: more of it never lowers
the head; -1: never raises it). Its first-layer weights keep that sign, the
head's output weights are non-negative, so the head is non-decreasing in
every oriented input, for any input, however far outside the training range.
Free inputs take any sign. An input a head must not read is masked out.

Where the orientations come from (docs/design.md, "Recency against cadence"):

* **Silence is oriented, raw order counts are not.** After frequent buying,
  the same silence means the customer has most likely left; so order counts
  must be free to *raise* P(at_risk) at long silence. The ``active`` and
  ``buy`` heads therefore do not read ``order_count`` or the mean gap between
  orders at all (which an order placed now could move either way); they read
  frequency through the cadence inputs (P(alive), expected purchases), which
  fall with silence relative to the customer's own rate, and through the
  decayed counters. Silence (days since the last order or activity, silence
  relative to the own gap, age) only ever lowers them.
* **More spend at the same cadence never lowers predicted spend.** Spend
  inputs are +1 in every head, so P(purchase) x E[spend | purchase] cannot
  fall when spend rises.
* **Catalogue size cannot buy value.** ``distinct_categories`` is read only by
  ``active`` (engagement); a shop with 2,000 categories must not make its
  customers high_value.

With these, the directional expectations of :mod:`model.training.behaviour.directions`
hold by construction (``tests/model/test_monotone.py`` checks it on random
weights): an order placed now never lowers P(high_value) or raises P(at_risk);
the same history, older, never lowers P(at_risk); more views never raise it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.cadence import CADENCE_INPUTS
from model.features import FEATURE_NAMES

HEADS: tuple[str, ...] = ("active", "buy", "value", "line")
#: The model input: the feature row, then the cadence inputs.
INPUT_NAMES: tuple[str, ...] = (*FEATURE_NAMES, *CADENCE_INPUTS)

#: Recency, silence and age: more of it never means more activity or purchase.
_SILENCE = {
    "days_since_last_activity": -1,
    "days_since_last_order": -1,
    "silence_ratio": -1,
    "tenure_days": -1,
    "days_since_first_order": -1,
}
#: Recent activity, purchases and spend, as the decayed counters and rates hold them.
_RECENT = {
    "orders_30d": +1,
    "orders_90d": +1,
    "spend_30d": +1,
    "spend_90d": +1,
    "orders_per_30d": +1,
    "spend_per_30d": +1,
    "btyd_p_alive": +1,
    "btyd_purchases": +1,
    "has_ordered": +1,
    "cart_to_order": +1,
    "orders_per_session": +1,
    "return_ratio": -1,
}
_BROWSING = {"product_views_30d": +1, "cart_adds_30d": +1}
_MADE_OF_BROWSING = frozenset({"cart_to_order", "orders_per_session"})

#: head -> {input: orientation}; 0 = read freely. Inputs not listed are not read.
ORIENTATION: dict[str, dict[str, int]] = {
    "active": {**_SILENCE, **_RECENT, **_BROWSING, "session_count": 0, "distinct_categories": 0},
    "buy": {**_SILENCE, **_RECENT, **_BROWSING, "session_count": 0},
    "value": {
        # Given a purchase, a customer who buys more, more often and more
        # recently spends more; age and cadence are free to say how much.
        # Browsing is read freely, but not the ratios made of it (an added
        # order moves them; they stay with activity and purchase).
        "order_count": +1,
        "total_spend": +1,
        "avg_order_value": +1,
        "btyd_spend": +1,
        "days_since_last_order": -1,
        "days_since_last_activity": -1,
        "silence_ratio": -1,
        # The recent-activity inputs, less those made of sessions and carts.
        **{k: v for k, v in _RECENT.items() if k not in _MADE_OF_BROWSING},
        "tenure_days": 0,
        "days_since_first_order": 0,
        # Not the mean gap between orders: an order placed now moves it either
        # way, so read freely it could make an added order lower the value.
        # Silence relative to the gap (silence_ratio) carries the cadence.
    },
}
ORIENTATION["value"].update({**dict.fromkeys(_BROWSING, 0), "session_count": 0})
# Above the line is value's question asked of the label: the same inputs, the same ways.
ORIENTATION["line"] = dict(ORIENTATION["value"])


@dataclass(frozen=True)
class Layout:
    """Masks for one network: which first-layer weights exist, and their signs."""

    #: (n_inputs, n_heads * units + n_heads) 1 where a weight may be non-zero:
    #: each head's hidden units, then each head's linear skip from the input
    allowed: np.ndarray
    #: same shape: +1 / -1 for an oriented weight, 0 for a free one
    sign: np.ndarray
    #: (n_heads * units, n_heads) output mask: each head reads its own units
    out_allowed: np.ndarray
    units: int


def layout(units: int, inputs: Sequence[str] = INPUT_NAMES) -> Layout:
    """The masks for towers of ``units`` hidden units per head."""
    n_in, n_heads = len(inputs), len(HEADS)
    allowed = np.zeros((n_in, n_heads * units + n_heads))
    sign = np.zeros_like(allowed)
    out_allowed = np.zeros((n_heads * units, n_heads))
    for h, head in enumerate(HEADS):
        cols = [*range(h * units, (h + 1) * units), n_heads * units + h]
        for i, name in enumerate(inputs):
            if name in ORIENTATION[head]:
                allowed[i, cols] = 1.0
                sign[i, cols] = ORIENTATION[head][name]
        out_allowed[h * units : (h + 1) * units, h] = 1.0
    return Layout(allowed=allowed, sign=sign, out_allowed=out_allowed, units=units)


def project(w: np.ndarray, allowed: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """NumPy form of the Keras constraint: mask, then clip each oriented weight to its sign."""
    w = w * allowed
    return np.where(sign == 0, w, sign * np.maximum(sign * w, 0.0))
