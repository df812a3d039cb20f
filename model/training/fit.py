"""Fit the value network, then calibrate it and place its decision line, on rows apart.

Three disjoint row sets (model/training/dataset.py): the weights come from the
fit rows; the epoch, the cadence-free calibration (Platt scales), the
high_value line and the decision weight from the early-stopping rows; the
validation rows are only ever measured. Imports TensorFlow lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.cadence import Cadence, extend
from model.scorer import Scorer, Towers
from model.segments import DEFAULT_SEGMENTS
from model.training.clv import fit_cadence
from model.training.dataset import Examples
from model.training.stacking import Head, candidates
from model.value import ValueHead
from stream.core.fold import DAY_MS

log = logging.getLogger(__name__)

#: A buyer's window spend is floored at this share of the median buyer's, so a
#: purchase refunded to zero is a small spend, not log(0).
MIN_SPEND_SHARE = 0.01


@dataclass
class Fitted:
    model: Any
    scorer: Scorer
    decision_weights: dict[str, float]
    history: dict[str, list[float]] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    #: the candidate value heads (model.training.stacking), the network's first
    heads: list[Head] = field(default_factory=list)

    def serve(self, head: Head, record: dict[str, Any]) -> None:
        """Serve ``head`` (chosen on validation rows); ``record`` says why."""
        self.scorer, self.decision_weights = head.scorer, head.decision_weights
        value = head.scorer.towers.value  # type: ignore[union-attr]
        self.calibration["value_source"] = record
        self.calibration["chosen"] = {
            "source": value.source,
            "platt": value.platt.tolist(),
            "stack": None if value.stack is None else value.stack.tolist(),
        }


@dataclass(frozen=True)
class Targets:
    """What the value head learns from, per row (model.training.network.TARGET_COLUMNS)."""

    active: np.ndarray
    buy: np.ndarray
    spend: np.ndarray
    above: np.ndarray

    @classmethod
    def of(cls, rows: Examples) -> Targets:
        label = np.asarray(rows.label_names)
        buy = np.isin(label, ["high_value", "regular"]).astype(np.float64)
        active = (label != "at_risk").astype(np.float64)
        above = (label == "high_value").astype(np.float64)
        return cls(active=active, buy=buy, spend=rows.spend, above=above)

    def matrix(self, offset: float, floor: float) -> np.ndarray:
        log_spend = np.log(np.maximum(self.spend, floor)) - offset
        return np.stack([self.active, self.buy, log_spend, self.above], axis=1)


def latest_rows(rows: Examples) -> Examples:
    """The rows at the latest cutoff: one per customer, as a buy-till-you-die fit wants."""
    return rows.subset(rows.cutoffs == rows.cutoffs.max())


def fit(
    train: Examples,
    early_stopping: Examples,
    cfg: Any,
    *,
    horizon_ms: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Fitted:
    """Fit on ``train``; stop, calibrate and place the decision on ``early_stopping``."""
    import keras
    import tensorflow as tf

    from model.training.network import build, exported

    # Same --seed, same weights: seed every RNG and ask TF for deterministic ops.
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    if train.classes != DEFAULT_SEGMENTS:
        raise ValueError(f"the value network serves {DEFAULT_SEGMENTS}, not {train.classes}")
    horizon_days = horizon_ms / DAY_MS
    cadence: Cadence = fit_cadence(latest_rows(train).x, horizon_days)
    x_fit, x_stop = extend(train.x, cadence), extend(early_stopping.x, cadence)
    mean, scale = standardisation(x_fit)
    clip = (x_fit.min(axis=0), x_fit.max(axis=0)) if cfg.clip else None
    t_fit, t_stop = Targets.of(train), Targets.of(early_stopping)
    bought = train.spend[t_fit.buy > 0]
    floor = MIN_SPEND_SHARE * float(np.median(bought)) if len(bought) else 1.0
    offset = float(np.log(np.maximum(bought, floor)).mean()) if len(bought) else 0.0
    units = cfg.hidden[0] if cfg.hidden else 16
    model = build(
        x_fit.shape[1],
        units=units,
        l2=cfg.l2,
        learning_rate=cfg.learning_rate,
        mean=mean,
        scale=scale,
        clip=clip,
    )
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True
        )
    ]
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(epoch, dict(logs or {}))
            )
        )
    history = model.fit(
        x_fit,
        t_fit.matrix(offset, floor),
        validation_data=(x_stop, t_stop.matrix(offset, floor)),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    layers, units, sigma = exported(model)
    # What the worker will serve: float32 weights, as weights.npz stores them.
    layers = [(k.astype(np.float32).astype(np.float64), b.astype(np.float32)) for k, b in layers]
    raw_value = ValueHead(np.array([[1.0, 0.0]] * 3), offset, horizon_days)
    uncalibrated = Scorer(
        train.classes,
        mean,
        scale,
        tuple((k, b.astype(np.float64)) for k, b in layers),
        clip,
        Towers(units, sigma, raw_value, cadence),
    )
    # Three value heads (network, BG/NBD + Gamma-Gamma, blend), each calibrated
    # and given its decision weight here; train.py chooses on validation rows.
    heads = candidates(uncalibrated, early_stopping.x, t_stop, early_stopping.y)
    network = heads[0]
    allowed = getattr(cfg, "value_heads", None)
    if allowed:
        heads = [h for h in heads if h.source in allowed] or [network]
    platt = network.scorer.towers.value.platt  # type: ignore[union-attr]
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    calibration = {
        "platt": {"active": platt[0].tolist(), "buy": platt[1].tolist(), "line": platt[2].tolist()},
        "high_value_lines": {
            "fit_median": float(np.median(train.thresholds)) if len(train) else None,
            "early_stopping": float(np.median(early_stopping.thresholds)),
        },
        "sigma": sigma,
        "cadence": cadence.to_dict(),
    }
    log.info("calibrated on %d early-stopping rows: %s", len(early_stopping), calibration)
    first = heads[0]
    return Fitted(model, first.scorer, first.decision_weights, hist, calibration, heads)


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    # A constant feature (e.g. no clicks in orders-only data) must pass as 0,
    # not divide by zero.
    scale[scale < 1e-9] = 1.0
    return mean, scale
