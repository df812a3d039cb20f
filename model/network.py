"""The seed network (design.md): input -> Dense(ReLU) x depth -> Dense(softmax).

Imports TensorFlow, so only the training job imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def build(
    n_features: int,
    n_classes: int,
    *,
    hidden: Sequence[int] = (32,),
    dropout: float = 0.1,
    l2: float = 1e-4,
    learning_rate: float = 1e-3,
    mean: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> Any:
    import keras

    reg = keras.regularizers.L2(l2) if l2 > 0 else None
    inputs = keras.Input(shape=(n_features,), name="features")
    h = inputs
    if mean is not None and scale is not None:
        # Standardisation inside the model, so model.keras alone reproduces the
        # scores. Keras divides by sqrt(variance): pass scale**2 to divide by scale.
        h = keras.layers.Normalization(
            mean=np.asarray(mean), variance=np.square(np.asarray(scale)), name="standardise"
        )(h)
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(
            units, activation="relu", kernel_regularizer=reg, name=f"hidden_{i}"
        )(h)
        if dropout > 0:
            h = keras.layers.Dropout(dropout, name=f"dropout_{i}")(h)
    outputs = keras.layers.Dense(
        n_classes, activation="softmax", kernel_regularizer=reg, name="segment"
    )(h)
    model = keras.Model(inputs, outputs, name="segmenter_mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def dense_layers(model: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) of each Dense layer, in order: what the NumPy scorer serves."""
    import keras

    return [
        (layer.get_weights()[0], layer.get_weights()[1])
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
    ]
