"""Buy-till-you-die CLV baseline: BG/NBD for purchase counts, Gamma-Gamma for order value.

docs/design.md ("How a model is judged") names it as what users would pick instead of
the network, and the bar to beat on orders-only data. References:

* Fader, Hardie & Lee (2005), "Counting your customers the easy way: an
  alternative to the Pareto/NBD model", Marketing Science 24(2): the BG/NBD
  likelihood (eq. 6) and the conditional expectation E[Y(t) | x, t_x, T] (eq. 10).
* Fader, Hardie & Lee (2005), "RFM and CLV: using iso-value curves for customer
  base analysis", JMR 42(4), and Fader & Hardie (2013), "The Gamma-Gamma model
  of monetary value": the spend model and its conditional expectation.

Pure NumPy + SciPy. Time is in weeks: day-scale ages put alpha in the hundreds
and make the optimiser's log-space steps coarse.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, gammaln

from model.cadence import Cadence
from model.training.baselines import (
    _AT_RISK,
    _HIGH_VALUE,
    _POTENTIAL,
    _REGULAR,
    _class_map,
    _raw,
    majority_class,
)
from model.training.btyd import BGNBD, WEEK_MS, GammaGamma, btyd_inputs, buyers
from model.training.dataset import Examples

log = logging.getLogger(__name__)

#: Below this many repeat buyers the fits are noise; the baseline falls back instead.
MIN_REPEAT_BUYERS = 10
#: Training quantiles of days-since-activity tried as the potential/at_risk line.
POTENTIAL_QUANTILES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
# Log-params are kept in this box: wider only reaches overflow, never a better fit.
_LOG_BOUND = 12.0


class FitError(ValueError):
    """The data cannot support the model (too few repeat buyers, or the optimiser diverged)."""


def _minimise(nll: Callable[[np.ndarray], float], x0: np.ndarray) -> np.ndarray:
    """Minimise over log-params: L-BFGS-B, then Nelder-Mead if it stopped short (with
    numeric gradients it often ends in "abnormal line search" right at the optimum)."""
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(x0)
    with np.errstate(all="ignore"):
        res = minimize(nll, x0, method="L-BFGS-B", bounds=bounds)
        if not res.success or not np.isfinite(res.fun):
            start = res.x if np.all(np.isfinite(res.x)) else x0
            opts = {"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-10}
            res = minimize(nll, start, method="Nelder-Mead", bounds=bounds, options=opts)
    if not (np.all(np.isfinite(res.x)) and np.isfinite(res.fun)):
        raise FitError(f"optimiser failed: {res.message}")
    return np.asarray(res.x, dtype=np.float64)


def _bgnbd_loglik(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood (eq. 6), the two terms joined by log-sum-exp."""
    r, alpha, a, b = params
    head = gammaln(r + x) - gammaln(r) + r * np.log(alpha) + betaln(a, b + x) - betaln(a, b)
    alive = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    died = np.log(a) - np.log(np.where(repeat, b + x - 1.0, 1.0)) - (r + x) * np.log(alpha + t_x)
    return np.asarray(head + np.where(repeat, np.logaddexp(alive, died), alive))


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, T: np.ndarray, *, penalizer: float = 1e-3) -> BGNBD:
    """Maximum-likelihood BG/NBD on repeat purchases ``x``, age at last purchase ``t_x``
    and age at the cutoff ``T`` (weeks; t_x = 0 when x = 0).

    ``penalizer`` is an L2 term on the log-params (lifetimes' penalizer, on logs):
    on small data, where the likelihood is flat along a/(a+b), it stops a and b
    running off to infinity; on 3,000 simulated customers it moved no mean
    estimate by more than 3%.
    """
    x, t_x, T = (np.asarray(v, dtype=np.float64).ravel() for v in (x, t_x, T))
    if not (x.shape == t_x.shape == T.shape):
        raise ValueError("x, t_x and T must have the same length")
    if np.any(x < 0) or np.any(t_x < 0) or np.any(t_x > T + 1e-9):
        raise ValueError("need x >= 0 and 0 <= t_x <= T")
    if int((x > 0).sum()) < MIN_REPEAT_BUYERS:
        raise FitError(f"BG/NBD needs >= {MIN_REPEAT_BUYERS} repeat buyers")
    # Start with r/alpha at the observed purchase rate: far starts can land
    # L-BFGS-B where r and alpha blow up together along a flat ridge.
    alpha0 = float(np.clip(np.mean(T) / max(float(np.mean(x)), 1e-2), 1e-2, 1e3))
    x0 = np.log([1.0, alpha0, 1.0, 1.0])

    def nll(theta: np.ndarray) -> float:
        ll = _bgnbd_loglik(np.exp(theta), x, t_x, T)
        return float(-ll.mean() + penalizer * np.sum(theta**2))

    r, alpha, a, b = np.exp(_minimise(nll, x0))
    return BGNBD(float(r), float(alpha), float(a), float(b))


def fit_gamma_gamma(
    frequency: np.ndarray, monetary: np.ndarray, *, penalizer: float = 1e-4
) -> GammaGamma:
    """Maximum-likelihood Gamma-Gamma on customers with frequency >= 1 and monetary > 0.

    q is fitted as 1 + exp(.): q <= 1 means an infinite population mean. Money is
    divided by its mean first (v is a scale parameter, so it is scaled back
    exactly), which keeps the start sensible in any currency.
    """
    f = np.asarray(frequency, dtype=np.float64).ravel()
    m = np.asarray(monetary, dtype=np.float64).ravel()
    keep = (f >= 1) & (m > 0) & np.isfinite(m)
    if int(keep.sum()) < MIN_REPEAT_BUYERS:
        raise FitError(f"Gamma-Gamma needs >= {MIN_REPEAT_BUYERS} repeat buyers with spend")
    f, m = f[keep], m[keep]
    scale = float(m.mean())
    mx = m / scale * f

    def nll(theta: np.ndarray) -> float:
        p, q, v = np.exp(theta[0]), 1.0 + np.exp(theta[1]), np.exp(theta[2])
        px = p * f
        ll = (
            gammaln(px + q) - gammaln(px) - gammaln(q) + q * np.log(v)
            + (px - 1.0) * np.log(mx) + np.log(f) - (px + q) * np.log(v + mx)
        )  # fmt: skip
        return float(-ll.mean() + penalizer * np.sum(theta**2))

    # p = 2, q = 3 and v chosen so the start's population mean is the sample mean (1.0).
    lp, lq, lv = _minimise(nll, np.log([2.0, 2.0, 1.0]))
    return GammaGamma(float(np.exp(lp)), 1.0 + float(np.exp(lq)), float(np.exp(lv)) * scale)


def _expected(x: np.ndarray, horizon_weeks: float) -> tuple[np.ndarray, np.ndarray]:
    """(expected spend, expected purchases) over the horizon; FitError when unfittable.

    Fitted on the buyers (age from their first purchase); customers who never
    bought are outside the buy-till-you-die process and expect nothing.
    """
    freq, t_x, T, monetary = btyd_inputs(x)
    bought = buyers(x)
    bgnbd = fit_bgnbd(freq[bought], t_x[bought], T[bought])
    gg = fit_gamma_gamma(freq[bought], monetary[bought])
    purchases = np.where(bought, bgnbd.expected_purchases(horizon_weeks, freq, t_x, T), 0.0)
    spend = purchases * gg.expected_value(freq, monetary)
    if not (np.all(np.isfinite(purchases)) and np.all(np.isfinite(spend))):
        raise FitError(f"non-finite predictions from {bgnbd} / {gg}")
    return spend, purchases


def clv_expected_spend(x: np.ndarray, *, horizon_ms: int) -> np.ndarray:
    """BG/NBD + Gamma-Gamma expected spend over the horizon for rows ``x``, fitted on
    those rows' own features (as :func:`clv_baseline`)."""
    return clv_expectations(x, horizon_ms=horizon_ms)[0]


def _potential_threshold(train: Examples) -> float:
    """Days-since-activity under which a predicted non-buyer is ``potential``.

    Chosen among :data:`POTENTIAL_QUANTILES` of the training non-buyers' recency,
    for accuracy on potential-vs-at_risk; -inf (nobody) without both labels.
    """
    if not {"potential", "at_risk"} <= set(train.classes):
        return -np.inf
    pot, risk = train.classes.index("potential"), train.classes.index("at_risk")
    rows = (train.y == pot) | (train.y == risk)
    if not rows.any():
        return -np.inf
    recency = _raw(train.x[rows], "days_since_last_activity")
    is_potential = train.y[rows] == pot
    best, threshold = -1.0, -np.inf
    for candidate in [*np.quantile(recency, POTENTIAL_QUANTILES), np.inf]:
        accuracy = float(((recency < candidate) == is_potential).mean())
        if accuracy > best:  # ties keep the lower threshold: the first tried
            best, threshold = accuracy, float(candidate)
    return threshold


def clv_expectations(x: np.ndarray, *, horizon_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(expected spend, expected purchases) over the horizon for rows ``x``, fitted on
    those rows' own features; 90-day spend and orders when unfittable, with a warning."""
    try:
        return _expected(x, horizon_ms / WEEK_MS)
    except ValueError as exc:
        log.warning("clv baseline: fit failed (%s); ranking by spend_90d, orders_90d", exc)
        return _raw(x, "spend_90d"), _raw(x, "orders_90d")


def clv_baseline(
    train: Examples,
    val: Examples,
    *,
    horizon_ms: int,
    top_quantile: float = 0.2,
    expected: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """BG/NBD + Gamma-Gamma ranking turned into segments; class indices for the ``val`` rows.

    Fitted on the validation rows' own features (history up to their cutoff:
    classic calibration/holdout use, no labels). Training labels only say how
    many of each to call: the top share(high_value) by expected spend are
    high_value, the next by expected purchases up to share(buyers) regular, the
    rest potential if recent enough (:func:`_potential_threshold`), else at_risk.
    With no training rows, rows expecting >= 0.5 purchases are the buyers and
    ``top_quantile`` of them high_value. Unfittable data (too few repeat buyers)
    falls back to ranking by 90-day spend and orders, with a warning.
    ``expected``: (spend, purchases) already computed for ``val`` (e.g. fitted
    per population, :func:`clv_expectations`), to decide over them at once.
    """
    mapping = _class_map(train.classes, majority_class(train.y, len(train.classes)))
    n = len(val)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    spend, purchases = expected or clv_expectations(val.x, horizon_ms=horizon_ms)
    if len(train):
        share = {c: float((train.y == i).mean()) for i, c in enumerate(train.classes)}
        n_buyers = round((share.get("high_value", 0.0) + share.get("regular", 0.0)) * n)
        n_hv = min(round(share.get("high_value", 0.0) * n), n_buyers)
    else:
        n_buyers = int((purchases >= 0.5).sum())
        n_hv = round(top_quantile * n_buyers)
    segment = np.full(n, _AT_RISK, dtype=np.int64)
    # Stable sorts: ties go to the earlier row, so the answer is deterministic.
    segment[np.argsort(-spend, kind="stable")[:n_hv]] = _HIGH_VALUE
    rest = np.flatnonzero(segment != _HIGH_VALUE)
    segment[rest[np.argsort(-purchases[rest], kind="stable")[: n_buyers - n_hv]]] = _REGULAR
    recent = _raw(val.x, "days_since_last_activity") < _potential_threshold(train)
    segment[(segment == _AT_RISK) & recent] = _POTENTIAL
    return mapping[segment]


#: Used when the rows cannot support a fit (fewer than MIN_REPEAT_BUYERS repeat
#: buyers): BG/NBD as fitted to CDNOW in weeks (Fader, Hardie & Lee 2005, table 1).
#: Without a Gamma-Gamma fit, a customer's own mean order value is their expectation.
PRIOR_BGNBD = BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)


def fit_cadence(x: np.ndarray, horizon_days: float) -> Cadence:
    """BG/NBD and Gamma-Gamma fitted on the buyers among rows ``x`` (one per customer,
    features at one cutoff), for the network's cadence inputs (model.cadence)."""
    freq, t_x, T, monetary = btyd_inputs(x)
    bought = buyers(x)
    try:
        bg = fit_bgnbd(freq[bought], t_x[bought], T[bought])
    except ValueError as exc:
        log.warning("cadence: BG/NBD fit failed (%s); using the CDNOW prior", exc)
        bg = PRIOR_BGNBD
    try:
        gg: GammaGamma | None = fit_gamma_gamma(freq[bought], monetary[bought])
    except ValueError as exc:
        log.warning("cadence: Gamma-Gamma fit failed (%s); own mean order values", exc)
        gg = None
    return Cadence(
        r=bg.r,
        alpha=bg.alpha,
        a=bg.a,
        b=bg.b,
        horizon_days=horizon_days,
        p=None if gg is None else gg.p,
        q=None if gg is None else gg.q,
        v=None if gg is None else gg.v,
    )
