"""Serve a trained network with NumPy: no TensorFlow in the worker.

The artifact's ``weights.npz`` holds the standardisation statistics and each
Dense layer's kernel and bias, exported from the Keras model at training time.
Tests check this forward pass against Keras to 1e-5 on 10,000 inputs.
Models that record their training range (``clip_lo``/``clip_hi``) have every
input clamped to it first, as the Keras model's ``ClipToRange`` layer does.

Two kinds of network are served:

* ``mlp`` (models before the value head): Dense(ReLU) layers, then softmax
  over the classes; traits are read off the class probabilities.
* ``towers`` (:mod:`model.training.network`): the cadence inputs
  (:mod:`model.cadence`) appended to the feature row, one layer of three
  monotone towers with a linear skip each, and the value head
  (:mod:`model.value`) turning their outputs into probabilities and traits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.cadence import CADENCE_FIELDS, Cadence, btyd_scores, extend
from model.value import SEGMENT_ORDER, TRAITS, ValueHead

__all__ = ["TRAITS", "Scorer", "Scores", "Towers", "save_weights"]


@dataclass(frozen=True)
class Scores:
    """One forward pass: segment probabilities and predictive traits, row for row."""

    #: (n, len(classes)) published probabilities (calibrated, no decision offsets)
    probabilities: np.ndarray
    #: (n, len(TRAITS)) float64, NaN where the model cannot say
    traits: np.ndarray


@dataclass(frozen=True)
class Towers:
    """The ``towers`` kind's parts beside its two layers (see the module docstring)."""

    #: hidden units per head; the first layer's remaining columns are the skips
    units: int
    #: the value head's lognormal log-scale
    sigma: float
    value: ValueHead
    cadence: Cadence | None


@dataclass(frozen=True)
class Scorer:
    classes: tuple[str, ...]
    #: standardisation of the model input (the feature row, then any cadence inputs)
    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    #: per-input training range, or None for models trained before it was kept
    clip: tuple[np.ndarray, np.ndarray] | None = None
    towers: Towers | None = None

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
            towers = _load_towers(data, classes) if "towers_units" in data.files else None
        if towers is not None:
            return cls(classes, mean, scale, layers, clip, towers)
        if layers[-1][0].shape[1] != len(classes):
            raise ValueError(
                f"{weights_path}: output layer has {layers[-1][0].shape[1]} units "
                f"but the manifest lists {len(classes)} classes"
            )
        return cls(classes=classes, mean=mean, scale=scale, layers=layers, clip=clip)

    @property
    def n_inputs(self) -> int:
        """Width of the network's input: the feature row plus any cadence inputs."""
        return int(self.mean.shape[0])

    def score(self, x: np.ndarray) -> Scores:
        """Probabilities and traits for a (n, n_features) matrix, in one forward pass."""
        if self.towers is None:
            probs = self._softmax(x)
            return Scores(probs, legacy_traits(self.classes, probs))
        probs, traits = self.towers.value.compose(self.heads(x), self.classes, self.btyd(x))
        return Scores(probs, traits)

    def btyd(self, x: np.ndarray) -> np.ndarray | None:
        """The buy-till-you-die scores a stacked value head reads (None if it reads none)."""
        towers = self.towers
        if towers is None or towers.value.stack is None or towers.cadence is None:
            return None
        return btyd_scores(towers.cadence, np.asarray(x, dtype=np.float64))

    def heads(self, x: np.ndarray) -> np.ndarray:
        """The ``towers`` kind's raw outputs (n, 4): active logit, buy logit, value, line logit."""
        return self.heads_after(self.first_layer(self.model_input(x)))

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """The ``towers`` kind's network input: ``x`` with its cadence inputs, clipped to
        the training range and standardised, (n, :attr:`n_inputs`)."""
        if self.towers is None:
            raise ValueError("only a value-head model has heads")
        return self._standardised(extend(np.asarray(x, dtype=np.float64), self.towers.cadence))

    def first_layer(self, h: np.ndarray) -> np.ndarray:
        """The towers' first layer before its activation, for :meth:`model_input` rows."""
        w_in, b_in = self.layers[0]
        out: np.ndarray = _rowwise(h, w_in) + b_in
        return out

    def heads_after(self, a: np.ndarray) -> np.ndarray:
        """:meth:`heads` from :meth:`first_layer`'s output."""
        w_out, b_out = self.layers[1]
        n_hidden = w_out.shape[0]
        out: np.ndarray = (
            _rowwise(np.maximum(a[:, :n_hidden], 0.0), w_out) + b_out + a[:, n_hidden:]
        )
        return out

    def standardised_mean(self) -> np.ndarray:
        """Each network input at its training mean, as :meth:`model_input` gives it:
        0, unless the training range clips the mean."""
        return self._standardised(self.mean[None, :])[0]

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
        if self.towers is not None:
            return self.towers.value.probabilities(self.heads(x), self.classes, self.btyd(x))
        return self._softmax(x)

    def _standardised(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float64)
        if self.clip is not None:
            h = np.clip(h, self.clip[0], self.clip[1])
        out: np.ndarray = (h - self.mean) / self.scale
        return out

    def _softmax(self, x: np.ndarray) -> np.ndarray:
        h = self._standardised(x)
        *hidden, (w_out, b_out) = self.layers
        for w, b in hidden:
            h = np.maximum(_rowwise(h, w) + b, 0.0)
        logits = _rowwise(h, w_out) + b_out
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        out: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return out


def _load_towers(data: Any, classes: tuple[str, ...]) -> Towers:
    if set(classes) != set(SEGMENT_ORDER):
        raise ValueError(f"a value-head model serves the classes {SEGMENT_ORDER}, not {classes}")
    cadence = None
    if "cadence" in data.files:
        stored = data["cadence"].tolist()
        cadence = Cadence.from_dict(dict(zip(CADENCE_FIELDS, stored, strict=True)))
    stacked = "stack" in data.files and cadence is not None
    value = ValueHead(
        platt=data["platt"].astype(np.float64).reshape(3, 2),
        log_offset=float(data["log_offset"]),
        horizon_days=float(data["horizon_days"]),
        stack=data["stack"].astype(np.float64).reshape(3, 2) if stacked else None,
        source=str(data["value_source"]) if "value_source" in data.files else "network",
    )
    return Towers(int(data["towers_units"]), float(data["sigma"]), value, cadence)


def towers_arrays(towers: Towers) -> dict[str, np.ndarray]:
    """What :func:`save_weights` stores for the ``towers`` kind."""
    v = towers.value
    out = {
        "towers_units": np.asarray(towers.units),
        "sigma": np.asarray(towers.sigma, dtype=np.float64),
        "platt": np.asarray(v.platt, dtype=np.float64),
        "log_offset": np.asarray(v.log_offset, dtype=np.float64),
        "horizon_days": np.asarray(v.horizon_days, dtype=np.float64),
        "value_source": np.asarray(v.source),
    }
    if v.stack is not None:
        out["stack"] = np.asarray(v.stack, dtype=np.float64)
    if towers.cadence is not None:
        c = towers.cadence.to_dict()
        # None (no Gamma-Gamma fit) as NaN: one float array, read back by name.
        out["cadence"] = np.asarray(
            [np.nan if c[k] is None else c[k] for k in CADENCE_FIELDS], dtype=np.float64
        )
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
    towers: Towers | None = None,
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
    if towers is not None:
        arrays.update(towers_arrays(towers))
    np.savez(path, **arrays)  # type: ignore[arg-type]
