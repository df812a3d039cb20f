"""From the network's three heads to segment probabilities and predictive traits. Pure NumPy.

The network predicts the next horizon's spend as a zero-inflated lognormal
(Wang, Liu & Miao 2019, "A Deep Probabilistic Model for Customer Lifetime
Value Prediction"), with the zero part split in two so that the four segments
of the label definition fall out of one distribution:

* P(active) = sigmoid(active logit): any activity in the horizon;
* P(buy | active) = sigmoid(buy logit); P(purchase) = P(active) P(buy | active);
* spend | purchase ~ lognormal with mean exp(value) and log-scale sigma.

* P(above the line | purchase) = sigmoid(line logit), where the line is the
  label definition's: the top-quantile spend of that window's buyers.

Then::

    P(high_value) = P(purchase) * P(above the line | purchase)
    P(regular)    = P(purchase) * (1 - P(above the line | purchase))
    P(potential)  = P(active) * (1 - P(buy | active))
    P(at_risk)    = 1 - P(active)

How the top-20% cut is placed without an oracle: it is never placed in money
at serving. The ``line`` head learned, on every training window, which
customers' spend ended at or above that window's own line; so it answers
"top fifth of the buyers of the coming window", whatever the season or the
shop's currency. Predicted spend ranks customers; the line head decides.

Each of the three probabilities is recalibrated with a Platt scale (a > 0, b)
fitted on the early-stopping rows, never the validation rows; a positive scale
keeps every monotone direction of the heads. The published probabilities are
these, with no decision offset in them: a class-weight prior or an F1 offset
lives in the manifest's decision weights (model.segments.decision_scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The predictive traits per user, in this column order (docs/contracts.md).
#: ``days_to_next_order`` is from the scoring time; the worker turns it into
#: ``expected_next_order_at``. NaN = the model cannot say.
TRAITS: tuple[str, ...] = (
    "p_purchase_90d",
    "predicted_spend_90d",
    "p_active_90d",
    "days_to_next_order",
)
#: Below this P(purchase), no next order is expected: its time is not published.
MIN_P_NEXT_ORDER = 0.01
SEGMENT_ORDER: tuple[str, ...] = ("high_value", "regular", "potential", "at_risk")


def sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|
    return out


#: Where the value head's probabilities come from (see :class:`ValueHead`).
SOURCES: tuple[str, ...] = ("network", "btyd", "blend")
#: The network head each probability reads: active, buy, line (column of ``heads``).
_HEAD_COLUMNS = (0, 1, 3)


@dataclass(frozen=True)
class ValueHead:
    """What turns the heads' outputs into probabilities and traits.

    Each of the three probabilities is ``sigmoid(a * head + b)`` (a Platt
    scale), and with ``stack`` also ``+ c * score + d * (never ordered)``, where
    ``score`` is the buy-till-you-die model's own (model.cadence.btyd_scores:
    logit P(purchase in the horizon) for activity and buying, log expected
    spend for the line). ``source`` names which the training chose on
    validation rows (model.training.stacking): the network alone (no stack),
    BG/NBD + Gamma-Gamma alone (a = 0, and its expected spend is the
    published one), or a blend of both. a, c >= 0 keep every monotone
    direction of both.
    """

    #: Platt scales (a, b) for the active, buy and above-the-line probabilities
    platt: np.ndarray  # (3, 2)
    #: added to the value head's output: log E[spend | purchase] = value + offset
    log_offset: float
    horizon_days: float
    #: (c, d) per probability on the buy-till-you-die score and the non-buyer indicator
    stack: np.ndarray | None = None  # (3, 2)
    source: str = "network"

    def _heads(
        self, heads: np.ndarray, btyd: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P(active), P(buy | active), P(above the line | purchase)), calibrated."""
        z = [a * heads[:, col] + b for (a, b), col in zip(self.platt, _HEAD_COLUMNS, strict=True)]
        if self.stack is not None:
            if btyd is None:
                raise ValueError("this value head stacks buy-till-you-die scores: pass them")
            never = 1.0 - btyd[:, 3]
            z = [
                zk + c * btyd[:, k] + d * never
                for k, (zk, (c, d)) in enumerate(zip(z, self.stack, strict=True))
            ]
        p_active, p_buy, above = (sigmoid(zk) for zk in z)
        return p_active, p_buy, above

    def probabilities(
        self, heads: np.ndarray, classes: tuple[str, ...], btyd: np.ndarray | None = None
    ) -> np.ndarray:
        """``heads`` (n, 4): active logit, buy logit, value, line logit -> (n, classes).

        Apart from :meth:`compose` because explanations score every changed
        user once per feature and need no traits.
        """
        return _segments(*self._heads(heads, btyd), classes)

    def compose(
        self, heads: np.ndarray, classes: tuple[str, ...], btyd: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, traits) from ``heads``. The lognormal's spread does not
        enter: the mean spend is exp(value), whatever the spread."""
        p_active, p_buy, above = self._heads(heads, btyd)
        p_purchase = p_active * p_buy
        traits = np.empty((heads.shape[0], len(TRAITS)))
        traits[:, 0] = p_purchase
        if self.source == "btyd" and btyd is not None:
            traits[:, 1] = btyd[:, 4]  # BG/NBD purchases priced by Gamma-Gamma
        else:
            log_mean = heads[:, 2] + self.log_offset
            traits[:, 1] = p_purchase * np.exp(np.minimum(log_mean, 700.0))
        traits[:, 2] = p_active
        traits[:, 3] = days_to_next_order(p_purchase, self.horizon_days)
        return _segments(p_active, p_buy, above, classes), traits


def _segments(
    p_active: np.ndarray, p_buy: np.ndarray, above: np.ndarray, classes: tuple[str, ...]
) -> np.ndarray:
    p_purchase = p_active * p_buy
    by_name = {
        "high_value": p_purchase * above,
        "regular": p_purchase * (1.0 - above),
        "potential": p_active * (1.0 - p_buy),
        "at_risk": 1.0 - p_active,
    }
    return np.stack([by_name[c] for c in classes], axis=1)


def days_to_next_order(p_purchase: np.ndarray, horizon_days: float) -> np.ndarray:
    """Median days to the next order if orders came as a Poisson process with the rate
    that gives ``p_purchase`` within the horizon: H ln 2 / -ln(1 - p). NaN below
    :data:`MIN_P_NEXT_ORDER`."""
    p = np.clip(p_purchase, 0.0, 1.0 - 1e-9)
    with np.errstate(divide="ignore"):
        days = horizon_days * np.log(2.0) / -np.log1p(-p)
    out: np.ndarray = np.where(p >= MIN_P_NEXT_ORDER, days, np.nan)
    return out
