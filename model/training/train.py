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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from model.features import FEATURE_NAMES, SCHEMA_HASH
from model.registry import KERAS, MANIFEST, WEIGHTS, publish_version, set_current
from model.scorer import save_weights
from model.training.assess import MAX_ECE, assess, behaviour_checks
from model.training.dataset import Examples, Prepared, prepare_examples
from model.training.fit import Fitted, fit
from model.training.gate import rows as gate_rows
from model.training.gate.rows import user_groups
from model.training.monotone import INPUT_NAMES
from model.training.stacking import choose
from stream.core.events import DAY_MS

__all__ = ["Fitted", "Prepared", "TrainConfig", "prepare_examples", "train_from_events"]

log = logging.getLogger(__name__)
# TensorFlow's C++ start-up chatter is noise for people running `segmenter train`.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(frozen=True)
class TrainConfig:
    #: hidden units per head (the first entry; the towers are one layer deep)
    hidden: tuple[int, ...] = (16,)
    dropout: float = 0.0
    l2: float = 1e-4
    learning_rate: float = 3e-3
    epochs: int = 200
    batch_size: int = 256
    patience: int = 15
    seed: int = 0
    #: Clip inputs to the training range (model/training/network.py).
    clip: bool = True
    #: The value heads the choice may take (model.training.stacking): all three
    #: by default; ("network",) serves the network alone.
    value_heads: tuple[str, ...] = ("network", "btyd", "blend")


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
    validation: tuple[Examples, Examples, tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]
    | None = None,
    reference_rows: np.ndarray | None = None,
) -> Path:
    """Write model, weights, manifest and report into ``model_dir/<version>``, atomically.

    ``validation.npz`` keeps the rows the promotion gate scores every model on
    (:mod:`model.training.gate.rows`): (V rows, backtest rows, their user ids,
    the baselines' decisions on the V rows).
    ``reference_rows`` (rows shaped like the worker's: one per arriving event)
    give the drift reference the worker compares live inputs with.
    """
    from model.drift import reference

    version = version or new_version(cfg.seed, int(training.get("examples", 0)))
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
    fitted.model.save(staging / KERAS)
    sc = fitted.scorer
    save_weights(staging / WEIGHTS, sc.mean, sc.scale, list(sc.layers), sc.clip, sc.towers)
    manifest = {
        "version": version,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "features": list(FEATURE_NAMES),
        "schema_hash": SCHEMA_HASH,
        "classes": list(classes),
        "inputs": list(INPUT_NAMES),
        "normalisation": {
            "mean": [float(v) for v in sc.mean],
            "scale": [float(v) for v in sc.scale],
        },
        "network": {
            "kind": "towers",
            "units": sc.towers.units if sc.towers else None,
            "l2": cfg.l2,
        },
        "decision": {"weights": fitted.decision_weights},
        "calibration": fitted.calibration,
        "training": {**training, "config": asdict(cfg)},
        "metrics": metrics,
        "code_version": code_version(),
    }
    if sc.clip is not None:
        manifest["input_range"] = {
            "lo": [float(v) for v in sc.clip[0]],
            "hi": [float(v) for v in sc.clip[1]],
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
        gate_rows.save(staging / gate_rows.FILE, *validation)
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
    fitted = fit(fit_rows, stop_rows, cfg, horizon_ms=horizon_ms, on_epoch=on_epoch)
    if len(fitted.heads) > 1:
        fit_x = np.concatenate([p.fit.x for p in parts])

        def behaves(scorer: Any) -> bool:
            checks = behaviour_checks(scorer.predict, val.classes, val.x, fit_x)
            return bool(checks["directional_passed"] and checks["archetypes_passed"])

        head, choice = choose(fitted.heads, val.x, val.y, val.spend, MAX_ECE, behaves)
        fitted.serve(head, choice)
        log.info("value head: %s (%s)", head.source, choice["candidates"])
    metrics, predicted, decided = assess(
        parts,
        fitted.scorer,
        horizon_ms=horizon_ms,
        top_quantile=top_quantile,
        decision_weights=fitted.decision_weights,
    )
    if "value_source" in fitted.calibration:
        metrics["value_source"] = fitted.calibration["value_source"]
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
        # The closed cutoffs the gate scores models at (model.training.dataset.gate_cutoffs).
        "gate_cutoffs_ms": _cutoff_list(Examples.concat([p.backtest for p in parts] + [val])),
        "horizon_ms": horizon_ms,
        "step_ms": step_ms,
        "top_quantile": top_quantile,
        "decision_weights": fitted.decision_weights,
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
        validation=(val, Examples.concat([p.backtest for p in parts]), user_groups(parts), decided),
        reference_rows=np.concatenate([_recent_serving_rows(p) for p in parts]),
    )
    render_report(target)
    return target


def render_report(target: Path, gate: dict[str, Any] | None = None) -> list[Path]:
    """(Re)write report.md and its plots from the artifact's own files."""
    from model.registry import load_version
    from model.training.report.render import write_report

    manifest = orjson.loads((target / MANIFEST).read_bytes())
    report = orjson.loads((target / "report.json").read_bytes())
    metrics = dict(manifest["metrics"])
    baselines = metrics.pop("baselines", {})
    if "clv_per_population" in metrics:  # shown, not gated (model.training.assess)
        baselines["clv per population"] = metrics.pop("clv_per_population")
    checks = metrics.pop("checks", None)
    calibration = None
    value = None
    if (target / "validation.npz").exists():
        with np.load(target / "validation.npz") as val:
            x, y = val["x"], val["y"]
            realised = val["spend"] if "spend" in val.files else None
        scores = load_version(target).scorer.score(x)
        calibration = (scores.probabilities, y)
        if realised is not None:
            value = _value_rankings(x, scores.traits, realised, manifest["training"])
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
        value=value,
    )


def _value_rankings(
    x: np.ndarray, traits: np.ndarray, realised: np.ndarray, training: dict[str, Any]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The rankings the report charts, over past buyers: the model's predicted spend,
    BG/NBD + Gamma-Gamma's, and the best single raw input's."""
    from model.features import raw_column
    from model.scorer import TRAITS
    from model.training.clv import clv_expected_spend

    past = raw_column(x, "order_count") >= 1
    rankings: dict[str, np.ndarray] = {}
    spend = traits[past, TRAITS.index("predicted_spend_90d")]
    if not np.isnan(spend).all():
        rankings["model"] = spend
    horizon = int(training.get("horizon_ms") or 90 * DAY_MS)
    rankings["BG/NBD + Gamma-Gamma"] = clv_expected_spend(x[past], horizon_ms=horizon)
    rankings["input spend_90d"] = raw_column(x[past], "spend_90d")
    return rankings, realised[past]
