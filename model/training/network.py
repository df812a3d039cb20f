"""The seed network (docs/model.md): input -> Dense(ReLU) x depth -> Dense(softmax).

Generalised in two ways that keep it an MLP served by the same NumPy forward
pass (:mod:`model.scorer`):

* inputs are clipped to the training range first (:class:`ClipToRange`), so a
  EUR 900 order where training rarely saw one is read as the largest order it
  did see, not extrapolated;
* with ``monotone=True`` the weights are kept, by projected gradient descent
  (Keras kernel constraints), in the set where the directional expectations
  hold by construction (:mod:`model.training.monotone`).

Imports TensorFlow, so only the training job imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from model.training.monotone import Layout, layout


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
class HiddenConstraint(keras.constraints.Constraint):
    """The allowed connections, and each monotone input row's sign (:mod:`model.training.monotone`).

    First layer: a monotone row keeps only weights of its orientation's sign.
    Deeper layers (``sign`` None): a block connects to itself, non-negatively.
    A projection, applied after every optimiser step.
    """

    def __init__(self, allowed: Any, sign: Any | None) -> None:
        self.allowed = np.asarray(allowed, dtype="float32")
        self.sign = None if sign is None else np.asarray(sign, dtype="float32")

    def __call__(self, w: Any) -> Any:
        ops = keras.ops
        w = w * self.allowed
        if self.sign is None:
            return ops.relu(w)
        s = self.sign[:, None]
        return ops.where(s == 0, w, s * ops.relu(s * w))

    def get_config(self) -> dict[str, Any]:
        sign = None if self.sign is None else self.sign.tolist()
        return {"allowed": self.allowed.tolist(), "sign": sign}


@keras.saving.register_keras_serializable(package="segmenter")
class OutputConstraint(keras.constraints.Constraint):
    """Per hidden unit: ``at_risk <= every other class``, and in value-block rows
    ``every other class <= high_value`` (:mod:`model.training.monotone`)."""

    def __init__(self, value_rows: Any, at_risk: int, high_value: int) -> None:
        self.value_rows = np.asarray(value_rows, dtype=bool)
        self.at_risk = int(at_risk)
        self.high_value = int(high_value)

    def __call__(self, w: Any) -> Any:
        ops = keras.ops
        n = int(w.shape[1])
        cols = [w[:, i] for i in range(n)]
        ar, hv = self.at_risk, self.high_value
        if ar >= 0 and n > 1:
            others = ops.min(ops.stack([cols[i] for i in range(n) if i != ar], axis=1), axis=1)
            cols[ar] = ops.minimum(cols[ar], others)
        if hv >= 0 and n > 1:
            others = ops.max(ops.stack([cols[i] for i in range(n) if i != hv], axis=1), axis=1)
            cols[hv] = ops.where(self.value_rows, ops.maximum(cols[hv], others), cols[hv])
        return ops.stack(cols, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {
            "value_rows": self.value_rows.tolist(),
            "at_risk": self.at_risk,
            "high_value": self.high_value,
        }


def build(
    n_features: int,
    classes: Sequence[str],
    *,
    hidden: Sequence[int] = (32,),
    dropout: float = 0.1,
    l2: float = 1e-4,
    learning_rate: float = 1e-3,
    mean: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    clip: tuple[np.ndarray, np.ndarray] | None = None,
    monotone: bool = True,
) -> Any:
    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    plan: Layout | None = layout(hidden, classes) if monotone else None
    inputs = keras.Input(shape=(n_features,), name="features")
    h = inputs
    if clip is not None:
        h = ClipToRange(clip[0].tolist(), clip[1].tolist(), name="clip")(h)
    if mean is not None and scale is not None:
        # Standardisation inside the model, so model.keras alone reproduces the
        # scores. Keras divides by sqrt(variance): pass scale**2 to divide by scale.
        h = keras.layers.Normalization(
            mean=np.asarray(mean), variance=np.square(np.asarray(scale)), name="standardise"
        )(h)
    for i, units in enumerate(hidden):
        constraint = None
        if plan is not None:
            constraint = HiddenConstraint(plan.allowed[i], plan.sign if i == 0 else None)
        h = keras.layers.Dense(
            units,
            activation="relu",
            kernel_regularizer=reg,
            kernel_constraint=constraint,
            name=f"hidden_{i}",
        )(h)
        if dropout > 0:
            h = keras.layers.Dropout(dropout, name=f"dropout_{i}")(h)
    out_constraint = None
    if plan is not None:
        names = list(classes)
        out_constraint = OutputConstraint(
            plan.unit_block == 0,
            names.index("at_risk") if "at_risk" in names else -1,
            names.index("high_value") if "high_value" in names else -1,
        )
    outputs = keras.layers.Dense(
        len(classes),
        activation="softmax",
        kernel_regularizer=reg,
        kernel_constraint=out_constraint,
        name="segment",
    )(h)
    model = keras.Model(inputs, outputs, name="segmenter_mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    if plan is not None:
        # Start inside the allowed set: constraints apply only after each step.
        for layer in model.layers:
            c = getattr(layer, "kernel_constraint", None)
            if c is not None:
                layer.kernel.assign(c(layer.kernel))
    return model


def dense_layers(model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) of each Dense layer, in order: what the NumPy scorer serves."""
    return [
        (layer.get_weights()[0], layer.get_weights()[1])
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
    ]
