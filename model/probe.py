"""A fixed probe batch every model is scored on when it loads.

Only the output width is known from the weights' shapes; a model whose
inner shapes disagree, or whose output is NaN, would otherwise load fine
and then fail every batch it scores (every record failing the same way:
a stall, or worse, each one dead-lettered). Scored here, it is refused at
load, and a serving worker keeps the model it has.
"""

from __future__ import annotations

import numpy as np

from model.features import N_FEATURES, transform
from model.scorer import TRAITS, Scorer

#: Feature rows as the worker builds them (before log1p): an empty user, and
#: a fixed spread of ordinary ones. Fixed, so a model's verdict never varies.
PROBE_ROWS = np.vstack(
    [
        np.zeros((1, N_FEATURES)),
        np.random.default_rng(20261207).uniform(0.0, 30.0, (15, N_FEATURES)),
    ]
)


def probe_problem(scorer: Scorer) -> str | None:
    """Why ``scorer`` cannot be served, or None: it scores the probe batch, in the
    worker's own shapes, to finite probabilities."""
    x = transform(PROBE_ROWS)
    n = len(x)
    try:
        scores = scorer.score(x)
    except (ValueError, IndexError, TypeError, FloatingPointError) as exc:
        return f"scoring the probe batch failed ({type(exc).__name__}: {exc})"
    probs = np.asarray(scores.probabilities)
    if probs.shape != (n, len(scorer.classes)):
        return f"probabilities of shape {probs.shape}, not {(n, len(scorer.classes))}"
    if not np.all(np.isfinite(probs)):
        return "probabilities not finite (NaN or infinite) on the probe batch"
    traits = np.asarray(scores.traits)
    if traits.shape != (n, len(TRAITS)):
        return f"traits of shape {traits.shape}, not {(n, len(TRAITS))}"
    if np.any(np.isinf(traits)):
        return "traits not finite (infinite) on the probe batch"
    # A NaN trait is one the model cannot give for that user: allowed. NaN for
    # every user of the probe batch is a value head gone bad (legacy models,
    # without one, give no traits of their own).
    if scorer.towers is not None and np.isnan(traits).all(axis=0).any():
        return "traits not finite (NaN for every row) on the probe batch"
    return None
