"""The network, BG/NBD + Gamma-Gamma, or a blend: three value heads, one chosen on validation rows.

Buy-till-you-die models are hard to beat on purchase logs (Fader, Hardie &
Lee 2005; the held-out logs this service is judged on showed it), and a
network reads what they cannot: browsing, categories, returns. So training
calibrates three value heads (model.value.ValueHead) on the early-stopping
rows, the same rows the Platt scales always came from:

* ``network``: each probability is a Platt scale of the network's head;
* ``btyd``: each is a logistic fit of the buy-till-you-die model's own score
  (model.cadence.btyd_scores) alone, and its expected spend is published;
* ``blend``: a logistic fit of both (stacking: Wolpert 1992).

Weights on the network head and on the score are kept non-negative, so each
stays monotone in the directions it was built to be. :func:`choose` then picks
on the validation rows, by the gate's primary metric (high_value F1 with each
head's own decision weight), among heads whose published probabilities are
calibrated (ECE within model.training.assess.MAX_ECE on every class with
support); on a tie, the simpler head (network, then btyd) wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize

from model.cadence import btyd_scores
from model.scorer import Scorer
from model.segments import weighted
from model.training.calibrate import f1_of, fit_platt, tune_decision_weight
from model.training.ranking import calibration_report, normalised_gini
from model.value import SOURCES, TRAITS, ValueHead

#: Bounds on the non-negative weights and on the offsets (as Platt's).
_MAX_WEIGHT = 20.0
_MAX_OFFSET = 20.0
#: The head each probability reads, as in model.value.
_HEAD_COLUMNS = (0, 1, 3)


@dataclass(frozen=True)
class Head:
    """One candidate value head with its decision weight."""

    source: str
    scorer: Scorer
    decision_weights: dict[str, float]


def logistic(
    columns: list[np.ndarray],
    y: np.ndarray,
    weight: np.ndarray,
    non_negative: list[bool],
) -> np.ndarray:
    """Coefficients (one per column) and the intercept, last, minimising the weighted
    cross-entropy of sigmoid(sum coef * column + intercept); the flagged
    coefficients stay in [0, 20]. All zeros but a neutral intercept when the rows
    cannot tell (fewer than 2 of either outcome)."""
    w = weight.astype(np.float64)
    pos, neg = float((w * y).sum()), float((w * (1 - y)).sum())
    k = len(columns)
    if pos < 2 or neg < 2 or not w.sum():
        return np.zeros(k + 1)
    x = np.stack(columns, axis=1) if columns else np.zeros((len(y), 0))

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:k] + theta[k]
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        total = w.sum()
        loss = float((w * (np.logaddexp(0.0, z) - y * z)).sum() / total)
        g = w * (p - y) / total
        return loss, np.concatenate([x.T @ g, [g.sum()]])

    bounds = [(0.0, _MAX_WEIGHT) if nn else (-_MAX_WEIGHT, _MAX_WEIGHT) for nn in non_negative]
    bounds.append((-_MAX_OFFSET, _MAX_OFFSET))
    start = np.zeros(k + 1)
    res = minimize(nll, start, jac=True, method="L-BFGS-B", bounds=bounds)
    return np.asarray(res.x, dtype=np.float64)


def stacked_head(
    base: ValueHead,
    heads: np.ndarray,
    btyd: np.ndarray,
    targets: Any,
    *,
    use_network: bool,
) -> ValueHead:
    """A stacked :class:`ValueHead` fitted on rows' raw heads and BTYD scores.

    Each probability on the rows it is conditional on, as Platt's: activity on
    all, purchase on the active, the line on the buyers.
    """
    never = 1.0 - btyd[:, 3]
    outcome = (targets.active, targets.buy, targets.above)
    conditional = (np.ones(len(heads)), targets.active, targets.buy)
    platt = np.zeros((3, 2))
    stack = np.zeros((3, 2))
    for k, col in enumerate(_HEAD_COLUMNS):
        columns = [btyd[:, k], never]
        non_negative = [True, False]
        if use_network:
            columns.insert(0, heads[:, col])
            non_negative.insert(0, True)
        theta = logistic(columns, outcome[k], conditional[k], non_negative)
        a = theta[0] if use_network else 0.0
        c, d = theta[-3], theta[-2]
        platt[k] = (a, theta[-1])
        stack[k] = (c, d)
    return replace(base, platt=platt, stack=stack, source="blend" if use_network else "btyd")


def candidates(
    uncalibrated: Scorer,
    x_stop: np.ndarray,
    targets: Any,
    y_stop: np.ndarray,
) -> list[Head]:
    """The three value heads, calibrated and with decision weights, on the early-stopping rows."""
    towers = uncalibrated.towers
    assert towers is not None and towers.cadence is not None

    heads = uncalibrated.heads(x_stop)
    btyd = btyd_scores(towers.cadence, x_stop)
    network = replace(
        towers.value,
        platt=fit_platt(heads, active=targets.active, buy=targets.buy, above=targets.above),
        stack=None,
        source="network",
    )
    values = [
        network,
        stacked_head(towers.value, heads, btyd, targets, use_network=False),
        stacked_head(towers.value, heads, btyd, targets, use_network=True),
    ]
    out = []
    for value in values:
        scorer = replace(uncalibrated, towers=replace(towers, value=value))
        weight = tune_decision_weight(scorer.predict(x_stop), y_stop, scorer.classes)
        out.append(Head(value.source, scorer, {"high_value": weight}))
    return out


def judge_head(head: Head, x: np.ndarray, y: np.ndarray, spend: np.ndarray) -> dict[str, Any]:
    """What :func:`choose` reads of a head on validation rows: high_value F1 with its
    decision weight, the worst ECE beyond sampling noise over classes with support,
    and the normalised Gini of predicted spend."""
    classes = head.scorer.classes
    scores = head.scorer.score(x)
    w = np.array([head.decision_weights.get(c, 1.0) for c in classes])
    said = weighted(scores.probabilities, w).argmax(axis=1)
    k = classes.index("high_value")
    cal = calibration_report(scores.probabilities, y, classes)
    eces = [v["ece_beyond_noise"] for v in cal.values() if v["support"]]
    predicted = scores.traits[:, TRAITS.index("predicted_spend_90d")]
    return {
        "high_value_f1": round(f1_of(said == k, y == k), 4),
        "max_ece_beyond_noise": round(max(eces), 4) if eces else None,
        "gini": _round(normalised_gini(predicted, spend)),
    }


def pick(judged: dict[str, dict[str, Any]], max_ece: float) -> str:
    """The source to serve from each head's judgement (:func:`judge_head`): the highest
    high_value F1 among heads calibrated within ``max_ece`` whose behavioural checks
    pass, the simpler on a tie; among all heads if none qualifies (the gate then
    refuses the candidate)."""
    fit = [
        s
        for s, j in judged.items()
        if (j["max_ece_beyond_noise"] or 0.0) <= max_ece and j.get("behaviour_passed", True)
    ]
    pool = fit or list(judged)
    return max(pool, key=lambda s: (judged[s]["high_value_f1"], -SOURCES.index(s)))


def choose(
    heads: list[Head],
    x: np.ndarray,
    y: np.ndarray,
    spend: np.ndarray,
    max_ece: float,
    behaves: Callable[[Scorer], bool] | None = None,
) -> tuple[Head, dict[str, Any]]:
    """The head to serve, and the record of the choice (for the manifest and gate.json).

    ``behaves`` runs the gate's behavioural checks (directional expectations,
    archetypes) on a head: BG/NBD alone cannot tell a browser from someone gone,
    and a head the gate would refuse for that is not chosen.
    """
    judged = {h.source: judge_head(h, x, y, spend) for h in heads}
    if behaves is not None:
        for h in heads:
            judged[h.source]["behaviour_passed"] = behaves(h.scorer)
    chosen = pick(judged, max_ece)
    record = {
        "chosen": chosen,
        "rule": "highest high_value F1 on validation rows among heads with ECE beyond "
        f"sampling noise <= {max_ece} on every class with support and passing the "
        "behavioural checks; ties to the simpler",
        "candidates": judged,
    }
    return next(h for h in heads if h.source == chosen), record


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
