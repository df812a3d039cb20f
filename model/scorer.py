"""Serve a trained MLP with NumPy: no TensorFlow in the worker.

The artifact's ``weights.npz`` holds the standardisation statistics and each
Dense layer's kernel and bias, exported from the Keras model at training time.
A test checks this forward pass against Keras to 1e-5 on 10,000 inputs.
Models that record their training range (``clip_lo``/``clip_hi``) have every
input clamped to it first, as the Keras model's ``ClipToRange`` layer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


#: The predictive traits a scorer gives per user, in this column order
#: (docs/contracts.md). ``days_to_next_order`` is from the scoring time; the
#: worker turns it into ``expected_next_order_at``. NaN = the model cannot say.
TRAITS: tuple[str, ...] = (
    "p_purchase_90d",
    "predicted_spend_90d",
    "p_active_90d",
    "days_to_next_order",
)


@dataclass(frozen=True)
class Scores:
    """One forward pass: segment probabilities and predictive traits, row for row."""

    #: (n, len(classes)) published probabilities (calibrated, no decision offsets)
    probabilities: np.ndarray
    #: (n, len(TRAITS)) float64, NaN where the model cannot say
    traits: np.ndarray


@dataclass(frozen=True)
class Scorer:
    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    #: per-feature training range, or None for models trained before it was kept
    clip: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def load(cls, weights_path: Path, classes: tuple[str, ...]) -> Scorer:
        with np.load(weights_path) as data:
            n_layers = int(data["n_layers"])
            layers = tuple(
                (data[f"kernel_{i}"].astype(np.float64), data[f"bias_{i}"].astype(np.float64))
                for i in range(n_layers)
            )
            mean = data["mean"].astype(np.float64)
            scale = data["scale"].astype(np.float64)
            clip = None
            if "clip_lo" in data.files:
                clip = (data["clip_lo"].astype(np.float64), data["clip_hi"].astype(np.float64))
        if layers[-1][0].shape[1] != len(classes):
            raise ValueError(
                f"{weights_path}: output layer has {layers[-1][0].shape[1]} units "
                f"but the manifest lists {len(classes)} classes"
            )
        return cls(classes=classes, mean=mean, scale=scale, layers=layers, clip=clip)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def score(self, x: np.ndarray) -> Scores:
        """Probabilities and traits for a (n, n_features) matrix, in one forward pass."""
        probs = self.predict(x)
        return Scores(probs, legacy_traits(self.classes, probs))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for a (n, n_features) matrix, one forward pass.

        Each row's result is bit for bit the same whatever rows it is scored
        with. A plain ``h @ w`` is not: BLAS takes other code paths for other
        matrix sizes (one row, small or large batches), with other rounding
        in the last bits, so a replay that cut the stream into other batches
        could publish a change with other probabilities or explanations under
        the same version. A stack of one-row products runs the same routine
        for every row (``tests/model/test_scorer_registry.py``), at about 1.4×
        the cost of one matrix product, which is small beside the batch.
        """
        h = np.asarray(x, dtype=np.float64)
        if self.clip is not None:
            h = np.clip(h, self.clip[0], self.clip[1])
        h = (h - self.mean) / self.scale
        *hidden, (w_out, b_out) = self.layers
        for w, b in hidden:
            h = np.maximum(_rowwise(h, w) + b, 0.0)
        logits = _rowwise(h, w_out) + b_out
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        out: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return out


def legacy_traits(classes: tuple[str, ...], probs: np.ndarray) -> np.ndarray:
    """Traits read off a classifier that has no value head: activity and purchase
    from the class probabilities; spend and timing unknown (NaN)."""
    out = np.full((probs.shape[0], len(TRAITS)), np.nan)
    idx = {c: i for i, c in enumerate(classes)}
    if "at_risk" in idx:
        out[:, 2] = 1.0 - probs[:, idx["at_risk"]]
    buyers = [idx[c] for c in ("high_value", "regular") if c in idx]
    if buyers:
        out[:, 0] = probs[:, buyers].sum(axis=1)
    return out


def _rowwise(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``h @ w`` computed one row at a time: (n, k) @ (k, m) as n (1, k) @ (k, m)."""
    out: np.ndarray = (h[:, None, :] @ w)[:, 0, :]
    return out


def save_weights(
    path: Path,
    mean: np.ndarray,
    scale: np.ndarray,
    layers: list[tuple[np.ndarray, np.ndarray]],
    clip: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    arrays: dict[str, np.ndarray] = {
        "mean": np.asarray(mean, dtype=np.float64),
        "scale": np.asarray(scale, dtype=np.float64),
        "n_layers": np.asarray(len(layers)),
    }
    if clip is not None:
        arrays["clip_lo"] = np.asarray(clip[0], dtype=np.float64)
        arrays["clip_hi"] = np.asarray(clip[1], dtype=np.float64)
    for i, (kernel, bias) in enumerate(layers):
        arrays[f"kernel_{i}"] = np.asarray(kernel, dtype=np.float32)
        arrays[f"bias_{i}"] = np.asarray(bias, dtype=np.float32)
    np.savez(path, **arrays)  # type: ignore[arg-type]
