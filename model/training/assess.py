"""Everything a candidate is judged on, measured once at training time. Pure NumPy.

* Metrics on the validation rows (:func:`model.training.evaluate.classification_report`)
  for the model and for every baseline, on the very same rows: the RFM rule,
  "the segment at the previous cutoff", and the classic CLV model (BG/NBD +
  Gamma-Gamma, :mod:`model.training.clv`).
* The directional expectations (:mod:`model.training.behaviour`) on those rows.
* The archetype customers (:mod:`model.training.archetypes`).

With several populations (the bootstrap trains on several), each baseline is
fitted and applied per population, as each would be on its own data, and the
rows are then scored together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from model.features import FEATURE_NAMES
from model.training import archetypes, behaviour
from model.training.baselines import majority_class, previous_segment_baseline, rfm_baseline
from model.training.clv import clv_baseline
from model.training.dataset import Examples, Prepared
from model.training.evaluate import classification_report

Predict = Callable[[np.ndarray], np.ndarray]

BASELINES = ("rfm", "previous_segment", "clv")


def baseline_predictions(
    part: Prepared, *, horizon_ms: int, top_quantile: float
) -> dict[str, np.ndarray]:
    """Each baseline's class indices for ``part.val``'s rows, in their order."""
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
        "clv": clv_baseline(part.train, part.val, horizon_ms=horizon_ms, top_quantile=top_quantile),
    }


def behaviour_checks(
    predict: Predict, classes: tuple[str, ...], x: np.ndarray, fit_x: np.ndarray
) -> dict[str, Any]:
    """Directional expectations on rows ``x`` and the archetype suite, with one verdict.

    ``fit_x`` (the rows the model was fitted on) says whether it ever saw
    clickstream: archetypes about browsing are not judged for models that did not.
    """
    directional = behaviour.check(predict, classes, x)
    sessions = fit_x[:, FEATURE_NAMES.index("session_count")]
    placed = archetypes.run(predict, classes, has_clicks=bool((sessions > 0).any()))
    return {
        "directional": directional,
        "directional_passed": all(d["passed"] for d in directional),
        "archetypes": placed["archetypes"],
        "pairs": placed["pairs"],
        "archetypes_passed": placed["passed"],
    }


def assess(
    parts: Sequence[Prepared],
    predict: Predict,
    *,
    horizon_ms: int,
    top_quantile: float,
) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of the model and the baselines on all parts' validation rows, and the checks.

    Returns ``(metrics, predicted class indices)``.
    """
    val = Examples.concat([p.val for p in parts])
    classes = val.classes
    predicted = predict(val.x).argmax(axis=1)
    metrics = classification_report(val.y, predicted, classes)
    per_part = [
        baseline_predictions(p, horizon_ms=horizon_ms, top_quantile=top_quantile) for p in parts
    ]
    metrics["baselines"] = {
        name: classification_report(val.y, np.concatenate([b[name] for b in per_part]), classes)
        for name in BASELINES
    }
    fit_x = np.concatenate([p.fit.x for p in parts])
    metrics["checks"] = behaviour_checks(predict, classes, val.x, fit_x)
    return metrics, predicted
