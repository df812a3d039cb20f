"""Train the MLP, evaluate it on the temporal validation window, write a versioned artifact.

The validation window (the latest cutoff) is never shown to :func:`fit`: the
weights come from the fit rows and the epoch from a separate early-stopping
cutoff before it (:func:`model.training.dataset.early_stopping_split`), so the metrics
the report and the promotion gate use are measured on rows nothing was tuned on.

Imports TensorFlow lazily (inside functions) so ``segmenter --help`` and the
worker stay light.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from model.features import FEATURE_NAMES, SCHEMA_HASH
from model.registry import KERAS, MANIFEST, WEIGHTS, publish_version, set_current
from model.scorer import Scorer, save_weights
from model.training.assess import assess
from model.training.dataset import Examples, Prepared, prepare_examples
from stream.core.events import DAY_MS

__all__ = ["Fitted", "Prepared", "TrainConfig", "prepare_examples", "train_from_events"]

log = logging.getLogger(__name__)
# TensorFlow's C++ start-up chatter is noise for people running `segmenter train`.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(frozen=True)
class TrainConfig:
    hidden: tuple[int, ...] = (32,)
    dropout: float = 0.1
    l2: float = 1e-4
    #: 3e-3 stopped after ~24 epochs at high_value F1 0.362 on a 10k-customer orders-only
    #: population where 1e-3 reached 0.409 (docs/model.md).
    learning_rate: float = 1e-3
    epochs: int = 200
    batch_size: int = 256
    patience: int = 15
    seed: int = 0
    #: 1.0 = fully balanced class weights, 0.0 = none. Measured on generated
    #: data (300 users, 240 days, 3 seeds): balanced 0.77-0.79 macro-F1, square
    #: root 0.81-0.84, none 0.83-0.86; balanced weights over-predict the rare
    #: classes when the validation window's priors differ from training's.
    class_weight_power: float = 0.5
    #: Keep the weights where the directional expectations hold by
    #: construction (model/training/monotone.py), and clip inputs to the training range.
    monotone: bool = True
    clip: bool = True
    #: Tune the high_value decision on the early-stopping rows (tune_high_value_bias).
    tune_decision: bool = True


@dataclass
class Fitted:
    model: Any
    mean: np.ndarray
    scale: np.ndarray
    history: dict[str, list[float]] = field(default_factory=dict)
    clip: tuple[np.ndarray, np.ndarray] | None = None

    def scorer(self, classes: Sequence[str]) -> Scorer:
        """The NumPy forward pass the worker will serve: every judgement uses it."""
        from model.training.network import dense_layers

        layers = tuple(
            (k.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64))
            for k, b in dense_layers(self.model)
        )
        return Scorer(tuple(classes), self.mean, self.scale, layers, self.clip)


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    # A constant feature (e.g. no clicks in orders-only data) must pass as 0,
    # not divide by zero.
    scale[scale < 1e-9] = 1.0
    return mean, scale


def class_weights(y: np.ndarray, n_classes: int, power: float = 1.0) -> dict[int, float]:
    """Balanced weights, raised to ``power``, for the classes present; absent ones get 0."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = (counts.sum() / (present.sum() * counts[present])) ** power
    return {i: float(w) for i, w in enumerate(weights)}


def fit(
    train: Examples,
    early_stopping: Examples,
    cfg: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Fitted:
    """Fit on ``train``; stop (and restore the best weights) by the loss on ``early_stopping``.

    ``early_stopping`` must not be the validation set that is reported and
    gated on: choosing the epoch by a set's loss is fitting to it. Keras names
    its loss ``val_loss`` in the history; here that is the early-stopping loss.
    """
    import keras
    import tensorflow as tf

    from model.training.network import build

    # Same --seed, same weights: seed every RNG and ask TF for deterministic ops.
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()

    n_classes = len(train.classes)
    mean, scale = standardisation(train.x)
    clip = (train.x.min(axis=0), train.x.max(axis=0)) if cfg.clip else None
    model = build(
        train.x.shape[1],
        train.classes,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        l2=cfg.l2,
        learning_rate=cfg.learning_rate,
        mean=mean,
        scale=scale,
        clip=clip,
        monotone=cfg.monotone,
    )
    y_train = keras.utils.to_categorical(train.y, n_classes)
    y_stop = keras.utils.to_categorical(early_stopping.y, n_classes)
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
        train.x,
        y_train,
        validation_data=(early_stopping.x, y_stop),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        class_weight=class_weights(train.y, n_classes, cfg.class_weight_power),
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return Fitted(model=model, mean=mean, scale=scale, history=hist, clip=clip)


#: Shifts of the high_value logit tried when tuning the decision on early-stopping rows.
BIAS_GRID = np.round(np.arange(-2.0, 2.0001, 0.1), 2)


def tune_high_value_bias(fitted: Fitted, rows: Examples) -> float:
    """Shift the high_value logit so that argmax maximises high_value F1 on ``rows``.

    The network is fitted for cross-entropy, the gate judges high_value F1
    (model/training/evaluate.py): for a class that rare, the best decision is rarely
    argmax of calibrated probabilities. The shift is chosen on the
    early-stopping rows, never on the validation window, and added to the
    output bias, so model.keras and weights.npz both carry it. A constant on
    one logit changes no derivative, so monotonicity holds as before.
    """
    classes = list(rows.classes)
    if "high_value" not in classes or not (rows.y == classes.index("high_value")).any():
        return 0.0
    hv = classes.index("high_value")
    logits = np.log(np.maximum(fitted.scorer(classes).predict(rows.x), 1e-12))
    truth = rows.y == hv
    best, best_f1 = 0.0, -1.0
    for shift in sorted(BIAS_GRID, key=abs):  # ties keep the smallest shift
        shifted = logits.copy()
        shifted[:, hv] += shift
        said = shifted.argmax(axis=1) == hv
        tp = float((said & truth).sum())
        f1 = 2 * tp / max(float(said.sum() + truth.sum()), 1.0)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(shift), f1
    out = fitted.model.get_layer("segment")
    kernel, bias = out.get_weights()
    bias[hv] += best
    out.set_weights([kernel, bias])
    return best


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def new_version(seed: int, n_examples: int) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha1(f"{stamp}-{seed}-{n_examples}".encode()).hexdigest()[:6]
    return f"{stamp}-{digest}"


def write_artifact(
    model_dir: Path,
    fitted: Fitted,
    *,
    classes: Sequence[str],
    metrics: dict[str, Any],
    cfg: TrainConfig,
    training: dict[str, Any],
    promote: bool,
    version: str | None = None,
    validation: Examples | None = None,
    reference_rows: np.ndarray | None = None,
) -> Path:
    """Write model, weights, manifest and report into ``model_dir/<version>``, atomically.

    ``validation.npz`` keeps the validation window's inputs and labels, so the
    promotion gate can score the serving model on exactly the same rows.
    ``reference_rows`` (rows shaped like the worker's: one per arriving event)
    give the drift reference the worker compares live inputs with.
    """
    from model.drift import reference
    from model.training.network import dense_layers

    version = version or new_version(cfg.seed, int(training.get("examples", 0)))
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
    fitted.model.save(staging / KERAS)
    save_weights(
        staging / WEIGHTS, fitted.mean, fitted.scale, dense_layers(fitted.model), fitted.clip
    )
    manifest = {
        "version": version,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "features": list(FEATURE_NAMES),
        "schema_hash": SCHEMA_HASH,
        "classes": list(classes),
        "normalisation": {
            "mean": [float(v) for v in fitted.mean],
            "scale": [float(v) for v in fitted.scale],
        },
        "network": {"hidden": list(cfg.hidden), "dropout": cfg.dropout, "l2": cfg.l2},
        "training": {**training, "config": asdict(cfg)},
        "metrics": metrics,
        "code_version": code_version(),
    }
    if fitted.clip is not None:
        manifest["input_range"] = {
            "lo": [float(v) for v in fitted.clip[0]],
            "hi": [float(v) for v in fitted.clip[1]],
        }
    if reference_rows is not None:
        manifest["drift_reference"] = reference(reference_rows)
    (staging / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    (staging / "report.json").write_bytes(
        orjson.dumps(
            {"version": version, **metrics, "history": fitted.history}, option=orjson.OPT_INDENT_2
        )
    )
    if validation is not None:
        np.savez_compressed(staging / "validation.npz", x=validation.x, y=validation.y)
    target = publish_version(model_dir, staging, version)
    if promote:
        set_current(model_dir, version)
    return target


def _cutoff_list(examples: Examples) -> list[int]:
    return [int(c) for c in sorted(set(examples.cutoffs.tolist()))]


#: The drift reference covers this much of each log's latest event time.
REFERENCE_SPAN_MS = 60 * DAY_MS


def _recent_serving_rows(part: Prepared) -> np.ndarray:
    """Model inputs as the worker scores them (one per arriving event), over the log's
    last :data:`REFERENCE_SPAN_MS`: what its live inputs are compared with."""
    from model.drift import serving_rows

    return serving_rows(part.events, since_ms=part.events[-1].timestamp - REFERENCE_SPAN_MS)


def train_from_events(
    events: Sequence[Any],
    model_dir: Path,
    *,
    horizon_ms: int,
    step_ms: int,
    cfg: TrainConfig,
    top_quantile: float = 0.2,
    promote: bool = True,
    source: str = "",
    source_kind: str = "events",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    version: str | None = None,
    cutoffs_since_ms: int | None = None,
) -> Path:
    """Events -> examples -> fit (early stopping apart) -> evaluate on validation -> registry.

    ``source_kind`` is ``"events"`` for a real event log (topics or a file) and
    ``"synthetic"`` for generated data: the gate never lets a synthetic model
    replace one trained on real events unless asked.
    """
    prepared = prepare_examples(
        events,
        horizon_ms=horizon_ms,
        step_ms=step_ms,
        top_quantile=top_quantile,
        cutoffs_since_ms=cutoffs_since_ms,
    )
    return train_prepared(
        [prepared],
        model_dir,
        horizon_ms=horizon_ms,
        step_ms=step_ms,
        cfg=cfg,
        top_quantile=top_quantile,
        promote=promote,
        source=source,
        source_kind=source_kind,
        on_epoch=on_epoch,
        version=version,
        cutoffs_since_ms=cutoffs_since_ms,
    )


def train_prepared(
    parts: Sequence[Prepared],
    model_dir: Path,
    *,
    horizon_ms: int,
    step_ms: int,
    cfg: TrainConfig,
    top_quantile: float = 0.2,
    promote: bool = True,
    source: str = "",
    source_kind: str = "events",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    version: str | None = None,
    cutoffs_since_ms: int | None = None,
) -> Path:
    """Fit on every part's fit rows, judge on every part's validation rows, write the artifact.

    One part per event log; the bootstrap passes one per generated population,
    each with its own cutoffs, label quantiles and baselines.
    """
    fit_rows = Examples.concat([p.fit for p in parts])
    stop_rows = Examples.concat([p.early_stopping for p in parts])
    val = Examples.concat([p.val for p in parts])
    log.info(
        "fitting on %d examples (%d part(s)), early stopping on %d, validating on %d",
        len(fit_rows),
        len(parts),
        len(stop_rows),
        len(val),
    )
    fitted = fit(fit_rows, stop_rows, cfg, on_epoch=on_epoch)
    shift = tune_high_value_bias(fitted, stop_rows) if cfg.tune_decision else 0.0
    scorer = fitted.scorer(val.classes)
    metrics, predicted = assess(
        parts, scorer.predict, horizon_ms=horizon_ms, top_quantile=top_quantile
    )
    n = len(val.classes)

    def counts(rows: Examples | np.ndarray) -> dict[str, int]:
        y = rows.y if isinstance(rows, Examples) else rows
        return {c: int(v) for c, v in zip(val.classes, np.bincount(y, minlength=n), strict=True)}

    distribution = counts(val)
    first = min(p.events[0].timestamp for p in parts)
    last = max(p.events[-1].timestamp for p in parts)
    training = {
        "source": source,
        "source_kind": source_kind,
        "parts": len(parts),
        "events": sum(len(p.events) for p in parts),
        "duplicate_events_dropped": sum(p.duplicates for p in parts),
        "examples": len(fit_rows),
        "early_stopping_examples": len(stop_rows),
        "validation_examples": len(val),
        # Events folded (the features' history) vs. cutoffs made into examples.
        "window": {"from_ms": first, "until_ms": last},
        "cutoffs_since_ms": cutoffs_since_ms,
        "cutoffs": _cutoff_list(Examples.concat([p.examples for p in parts])),
        "fit_cutoffs": _cutoff_list(fit_rows),
        "early_stopping_cutoff_ms": int(stop_rows.cutoffs.max()),
        "validation_cutoff_ms": int(val.cutoffs.max()),
        "horizon_ms": horizon_ms,
        "step_ms": step_ms,
        "top_quantile": top_quantile,
        "high_value_logit_shift": shift,
        "validation_distribution": distribution,
        "distributions": {
            "train": counts(fit_rows),
            "early_stopping": counts(stop_rows),
            "validation": distribution,
            "predicted": counts(predicted),
        },
    }
    target = write_artifact(
        model_dir,
        fitted,
        classes=val.classes,
        metrics=metrics,
        cfg=cfg,
        training=training,
        promote=promote,
        version=version,
        validation=val,
        reference_rows=np.concatenate([_recent_serving_rows(p) for p in parts]),
    )
    render_report(target)
    return target


def render_report(target: Path, gate: dict[str, Any] | None = None) -> list[Path]:
    """(Re)write report.md and its plots from the artifact's own files."""
    from model.registry import load_version
    from model.training.report import write_report

    manifest = orjson.loads((target / MANIFEST).read_bytes())
    report = orjson.loads((target / "report.json").read_bytes())
    metrics = dict(manifest["metrics"])
    baselines = metrics.pop("baselines", {})
    checks = metrics.pop("checks", None)
    calibration = None
    if (target / "validation.npz").exists():
        with np.load(target / "validation.npz") as val:
            x, y = val["x"], val["y"]
        calibration = (load_version(target).scorer.predict(x), y)
    return write_report(
        target,
        version=manifest["version"],
        classes=manifest["classes"],
        model_metrics=metrics,
        baselines=baselines,
        history=report.get("history", {}),
        distribution=manifest["training"].get("distributions", {}),
        gate=gate,
        training=manifest["training"],
        checks=checks,
        calibration=calibration,
        drift_reference=manifest.get("drift_reference"),
    )
