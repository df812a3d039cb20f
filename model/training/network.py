"""The network: clip -> standardise -> three monotone towers -> the value head.

The seed's MLP (docs/model.md) generalised to predict the next horizon's
spend distribution as well as the segments (:mod:`model.value` says how the
heads become probabilities). One Dense-like layer computes every tower's
hidden units and a linear skip per head at once, then each head reads its own
units. The NumPy scorer (:mod:`model.scorer`, kind ``towers``) serves the same
two matrices.

* inputs are clipped to the training range first (:class:`ClipToRange`), so a
  EUR 900 order where training rarely saw one is read as the largest order it
  did see, not extrapolated;
* the weights are kept, by projected gradient descent (Keras kernel
  constraints), where each head is monotone in its oriented inputs
  (:mod:`model.training.monotone`).

The loss is the ZILN loss of Wang, Liu & Miao (2019), with its zero part split
into "no activity" and "activity, no purchase", plus the cross-entropy of the
``line`` head against "spend at or above the row's own high_value line" (the
top quantile of that window's buyers). The line is asked directly rather than
read off the lognormal at a fixed sum of money: it moves with the season and
differs between shops, and a model trained across several populations (the
bootstrap) must place each customer against their own population's line.

Imports TensorFlow, so only the training job imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from model.training.monotone import HEADS, Layout, layout

#: Columns of the training target (:func:`targets`).
TARGET_COLUMNS = ("active", "buy", "log_spend", "above_line")


@keras.saving.register_keras_serializable(package="segmenter")
class ClipToRange(keras.layers.Layer):
    """Clamp each input to [lo, hi]: the training range of that feature."""

    def __init__(self, lo: Sequence[float], hi: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lo = [float(v) for v in lo]
        self.hi = [float(v) for v in hi]

    def call(self, x: Any) -> Any:
        return keras.ops.clip(x, np.asarray(self.lo), np.asarray(self.hi))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "lo": self.lo, "hi": self.hi}


@keras.saving.register_keras_serializable(package="segmenter")
class SignMask(keras.constraints.Constraint):
    """Mask a kernel, then clip each oriented weight to its sign (+1 / -1; 0 = free).

    A projection, applied after every optimiser step; :func:`model.training.monotone.project`
    is the same in NumPy.
    """

    def __init__(self, allowed: Any, sign: Any) -> None:
        self.allowed = np.asarray(allowed, dtype="float32")
        self.sign = np.asarray(sign, dtype="float32")

    def __call__(self, w: Any) -> Any:
        ops = keras.ops
        w = w * self.allowed
        return ops.where(self.sign == 0, w, self.sign * ops.relu(self.sign * w))

    def get_config(self) -> dict[str, Any]:
        return {"allowed": self.allowed.tolist(), "sign": self.sign.tolist()}


@keras.saving.register_keras_serializable(package="segmenter")
class Towers(keras.layers.Layer):
    """Every head's hidden units and skip in one kernel; output (n, heads + 1): the
    heads, then the lognormal's log-scale sigma (one learned scalar for all users,
    so that no input moves P(high_value) through the spread, only through the mean)."""

    def __init__(self, units: int, l2: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.l2 = float(l2)

    def build(self, input_shape: Any) -> None:
        plan: Layout = layout(self.units)
        n_in = int(input_shape[-1])
        if plan.allowed.shape[0] != n_in:
            raise ValueError(f"layout is for {plan.allowed.shape[0]} inputs, got {n_in}")
        reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        n_heads, n_hidden = len(HEADS), len(HEADS) * self.units
        self.kernel = self.add_weight(
            name="kernel",
            shape=(n_in, n_hidden + n_heads),
            initializer="glorot_uniform",
            regularizer=reg,
            constraint=SignMask(plan.allowed, plan.sign),
        )
        self.bias = self.add_weight(name="bias", shape=(n_hidden,), initializer="zeros")
        self.out_kernel = self.add_weight(
            name="out_kernel",
            shape=(n_hidden, n_heads),
            initializer="glorot_uniform",
            regularizer=reg,
            constraint=SignMask(plan.out_allowed, plan.out_allowed),
        )
        self.out_bias = self.add_weight(name="out_bias", shape=(n_heads,), initializer="zeros")
        self.log_sigma = self.add_weight(name="log_sigma", shape=(), initializer="zeros")

    def call(self, z: Any) -> Any:
        ops = keras.ops
        n_hidden = len(HEADS) * self.units
        a = ops.matmul(z, self.kernel)
        hidden = ops.relu(a[:, :n_hidden] + self.bias)
        heads = ops.matmul(hidden, self.out_kernel) + self.out_bias + a[:, n_hidden:]
        sigma = ops.exp(self.log_sigma) * ops.ones_like(heads[:, :1])
        return ops.concatenate([heads, sigma], axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "l2": self.l2}


def _bce(y: Any, logit: Any) -> Any:
    """Binary cross-entropy from a logit, stable for large |logit|."""
    ops = keras.ops
    return ops.softplus(logit) - y * logit


@keras.saving.register_keras_serializable(package="segmenter")
def value_loss(y_true: Any, y_pred: Any) -> Any:
    """ZILN with a split zero part, and the high_value line's cross-entropy (module docstring).

    ``y_true`` columns: :data:`TARGET_COLUMNS`; log spend is shifted by the
    model's offset, as the value head's output is.
    """
    ops = keras.ops
    active, buy, log_spend, above = (y_true[:, i] for i in range(4))
    z_active, z_buy, value, z_line, sigma = (y_pred[:, i] for i in range(5))
    mu = value - 0.5 * sigma * sigma
    lognormal = ops.log(sigma) + 0.5 * ops.square((log_spend - mu) / sigma)
    line = _bce(above, z_line)
    return _bce(active, z_active) + active * _bce(buy, z_buy) + buy * (lognormal + line)


def build(
    n_inputs: int,
    *,
    units: int = 16,
    l2: float = 1e-4,
    learning_rate: float = 1e-3,
    mean: np.ndarray,
    scale: np.ndarray,
    clip: tuple[np.ndarray, np.ndarray] | None = None,
) -> Any:
    inputs = keras.Input(shape=(n_inputs,), name="inputs")
    h = inputs
    if clip is not None:
        h = ClipToRange(clip[0].tolist(), clip[1].tolist(), name="clip")(h)
    # Standardisation inside the model, so model.keras alone reproduces the
    # heads. Keras divides by sqrt(variance): pass scale**2 to divide by scale.
    h = keras.layers.Normalization(
        mean=np.asarray(mean), variance=np.square(np.asarray(scale)), name="standardise"
    )(h)
    outputs = Towers(units, l2, name="towers")(h)
    model = keras.Model(inputs, outputs, name="segmenter_value")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss=value_loss)
    # Start inside the allowed set: constraints apply only after each step.
    towers = model.get_layer("towers")
    for weight in (towers.kernel, towers.out_kernel):
        weight.assign(weight.constraint(weight))
    return model


def exported(model: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, float]:
    """(layers, units, sigma) as the NumPy scorer serves them: the first layer's bias
    is padded with zeros for the skip columns."""
    towers = model.get_layer("towers")
    kernel, bias, out_kernel, out_bias, log_sigma = (
        np.asarray(w, dtype=np.float64) for w in towers.get_weights()
    )
    padded = np.concatenate([bias, np.zeros(kernel.shape[1] - bias.shape[0])])
    layers = [(kernel, padded), (out_kernel, out_bias)]
    return layers, towers.units, float(np.exp(log_sigma))
