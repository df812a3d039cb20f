"""Everything a candidate is judged on, measured once at training time. Pure NumPy.

* Metrics on the validation rows (:func:`model.training.evaluate.classification_report`)
  for the model and for every baseline, on the very same rows: the RFM rule,
  "the segment at the previous cutoff", and the classic CLV model (BG/NBD +
  Gamma-Gamma, :mod:`model.training.clv`).
* The directional expectations (:mod:`model.training.behaviour.directions`) on those rows.
* The archetype customers (:mod:`model.training.behaviour.archetypes`).

With several populations (the bootstrap trains on several), each baseline is
fitted and applied per population, as each would be on its own data, and the
rows are then scored together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from model.features import FEATURE_NAMES, raw_column
from model.scorer import TRAITS, Scorer
from model.segments import weighted
from model.training.baselines import majority_class, previous_segment_baseline, rfm_baseline
from model.training.behaviour import archetypes
from model.training.behaviour import directions as behaviour
from model.training.clv import clv_baseline, clv_expectations
from model.training.dataset import Examples, Prepared
from model.training.evaluate import classification_report
from model.training.ranking import calibration_report, ranking_report

Predict = Callable[[np.ndarray], np.ndarray]

BASELINES = ("rfm", "previous_segment", "clv")


def baseline_predictions(
    part: Prepared,
    *,
    horizon_ms: int,
    top_quantile: float,
    clv_expected: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Each baseline's class indices for ``part.val``'s rows, in their order.

    ``clv_expected``: the CLV model's (spend, purchases) for those rows, if
    already fitted (:func:`model.training.clv.clv_expectations`)."""
    val_cutoff = int(part.val.cutoffs.max())
    previous, _ = previous_segment_baseline(
        part.examples,
        val_cutoff,
        horizon_ms,
        fallback=majority_class(part.train.y, len(part.train.classes)),
    )
    return {
        "rfm": rfm_baseline(part.train, part.val, top_quantile=top_quantile),
        "previous_segment": previous,
        "clv": clv_baseline(
            part.train,
            part.val,
            horizon_ms=horizon_ms,
            top_quantile=top_quantile,
            expected=clv_expected,
        ),
    }


def behaviour_checks(
    predict: Predict, classes: tuple[str, ...], x: np.ndarray, fit_x: np.ndarray
) -> dict[str, Any]:
    """Directional expectations on rows ``x`` and the archetype suite, with one verdict.

    ``fit_x`` (the rows the model was fitted on) says whether it ever saw
    clickstream, and a buyer without any: archetypes about browsing are not
    judged for models that saw none, nor orders-only ones for models that saw
    no such buyer.
    """
    directional = behaviour.check(predict, classes, x)
    sessions = fit_x[:, FEATURE_NAMES.index("session_count")]
    orders = fit_x[:, FEATURE_NAMES.index("order_count")]
    placed = archetypes.run(
        predict,
        classes,
        has_clicks=bool((sessions > 0).any()),
        has_orders_only=bool(((orders > 0) & (sessions == 0)).any()),
    )
    return {
        "directional": directional,
        "directional_passed": all(d["passed"] for d in directional),
        "archetypes": placed["archetypes"],
        "pairs": placed["pairs"],
        "archetypes_passed": placed["passed"],
    }


#: Single raw inputs a value model must out-rank (issue: "ranks worse than a single raw input").
SINGLE_INPUTS: tuple[str, ...] = (
    "spend_per_30d",
    "spend_90d",
    "spend_30d",
    "total_spend",
    "avg_order_value",
    "orders_90d",
    "order_count",
    "orders_per_30d",
)
#: The calibration bound a candidate must meet on every class with support.
MAX_ECE = 0.03


def value_rankings(
    val: Examples, predicted_spend: np.ndarray | None, clv_spend: np.ndarray | None
) -> dict[str, Any]:
    """Ranking of realised window spend among the rows of past buyers (those a value
    ranking is for): the model's predicted spend, the CLV model's, and single raw inputs."""
    past = raw_column(val.x, "order_count") >= 1
    realised = val.spend[past]
    hv = val.y[past] == val.classes.index("high_value") if "high_value" in val.classes else None
    hv_mask = np.zeros(int(past.sum()), dtype=bool) if hv is None else hv
    out: dict[str, Any] = {"population": "past buyers", "rows": int(past.sum())}
    if predicted_spend is not None:
        out["model"] = ranking_report(predicted_spend[past], realised, hv_mask)
    if clv_spend is not None:
        out["clv"] = ranking_report(clv_spend[past], realised, hv_mask)
    out["single_inputs"] = {
        name: {
            k: v
            for k, v in ranking_report(raw_column(val.x[past], name), realised, hv_mask).items()
            if k != "deciles"
        }
        for name in SINGLE_INPUTS
    }
    return out


def next_order_error(val: Examples, days_to_next: np.ndarray) -> dict[str, Any]:
    """Median absolute error (days) of the expected next order time, over validation
    rows that did order within the window and got a prediction."""
    known = np.isfinite(val.next_order_days) & np.isfinite(days_to_next)
    if not known.any():
        return {"rows": 0, "median_abs_error_days": None}
    err = np.abs(val.next_order_days[known] - days_to_next[known])
    return {"rows": int(known.sum()), "median_abs_error_days": float(np.median(err))}


def assess(
    parts: Sequence[Prepared],
    scorer: Scorer,
    *,
    horizon_ms: int,
    top_quantile: float,
    decision_weights: dict[str, float] | None = None,
) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """Metrics of the model and the baselines on all parts' validation rows, and the checks.

    Returns ``(metrics, predicted class indices, each baseline's class indices)``,
    the last as the gate compares with (the pooled CLV decision with several parts).
    Segments are decided with the model's decision weights; calibration is measured on the published
    probabilities, which have none.
    """
    val = Examples.concat([p.val for p in parts])
    classes = val.classes
    scores = scorer.score(val.x)
    w = None
    if decision_weights:
        w = np.array([decision_weights.get(c, 1.0) for c in classes])
    predicted = weighted(scores.probabilities, w).argmax(axis=1)
    metrics = classification_report(val.y, predicted, classes)
    metrics["calibration"] = calibration_report(scores.probabilities, val.y, classes)
    metrics["calibration_max_ece"] = MAX_ECE
    spend = scores.traits[:, TRAITS.index("predicted_spend_90d")]
    # One BG/NBD + Gamma-Gamma fit per population, used by the ranking, the
    # per-population baseline and the pooled one alike.
    expected = [clv_expectations(p.val.x, horizon_ms=horizon_ms) for p in parts]
    clv_spend = np.concatenate([e[0] for e in expected])
    metrics["value"] = value_rankings(val, None if np.isnan(spend).all() else spend, clv_spend)
    metrics["next_order"] = next_order_error(
        val, scores.traits[:, TRAITS.index("days_to_next_order")]
    )
    per_part = [
        baseline_predictions(p, horizon_ms=horizon_ms, top_quantile=top_quantile, clv_expected=e)
        for p, e in zip(parts, expected, strict=True)
    ]
    decided = {name: np.concatenate([b[name] for b in per_part]) for name in BASELINES}
    metrics["baselines"] = {
        name: classification_report(val.y, pred, classes) for name, pred in decided.items()
    }
    if len(parts) > 1:
        # Like with like. The model decides every row by one rule, not knowing
        # which population a customer is from; the CLV baseline above decides
        # each population's top share apart, which uses exactly that knowledge
        # (the label's own grouping). So the gate compares the model with CLV
        # fitted per population but deciding once over all rows, and the
        # per-population decision is kept beside it for the report.
        metrics["clv_per_population"] = metrics["baselines"]["clv"]
        pooled = clv_baseline(
            Examples.concat([p.train for p in parts]),
            val,
            horizon_ms=horizon_ms,
            top_quantile=top_quantile,
            expected=(
                np.concatenate([e[0] for e in expected]),
                np.concatenate([e[1] for e in expected]),
            ),
        )
        metrics["baselines"]["clv"] = classification_report(val.y, pooled, classes)
        decided["clv"] = pooled
    fit_x = np.concatenate([p.fit.x for p in parts])
    metrics["checks"] = behaviour_checks(scorer.predict, classes, val.x, fit_x)
    return metrics, predicted, decided
