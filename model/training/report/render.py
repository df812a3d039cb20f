"""The human-readable training report written beside a model: PNG figures and ``report.md``.

``report.json`` is for machines (the gate, the CLI); this is for the person
deciding whether to trust a version. It puts the model next to its baselines
on the same validation window, because a macro-F1 alone does not say whether
the network learned anything a simple rule would not.

matplotlib is imported lazily, with the Agg backend, so the worker and CLI do
not pay for it and training works on machines without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.training.evaluate import fmt
from model.training.report.sections import (
    archetype_section,
    directional_section,
    drift_section,
    gate_section,
)
from model.training.report.value_charts import (
    DECILES_PNG,
    GAINS_PNG,
    calibration_section,
    decile_figure,
    gains_figure,
    save,
    value_section,
)
from stream.core.events import DAY_MS

CONFUSION_PNG = "confusion_matrix.png"
F1_PNG = "f1_vs_baselines.png"
CURVES_PNG = "training_curves.png"
DISTRIBUTION_PNG = "segment_distribution.png"
RELIABILITY_PNG = "reliability.png"
REPORT_MD = "report.md"

# Small figures: a report holds several, and they live beside every model version.
_FIGSIZE = (6.0, 4.0)


def _pyplot() -> Any:
    import matplotlib

    # Set before pyplot is imported: training runs headless (containers, CI).
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_save = save


def _confusion_figure(plt: Any, path: Path, classes: Sequence[str], confusion: Any) -> Path:
    m = np.asarray(confusion, dtype=float).reshape(len(classes), len(classes))
    totals = m.sum(axis=1, keepdims=True)
    # Colour by row share, so a small class's errors are as visible as a big one's;
    # the annotations keep the raw counts.
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(int(m[i, j])),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(classes)), labels=list(classes), rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (validation)")
    return _save(plt, fig, path)


def _f1_figure(
    plt: Any,
    path: Path,
    classes: Sequence[str],
    model_metrics: dict[str, Any],
    baselines: dict[str, dict[str, Any]],
) -> Path:
    groups = [*classes, "macro-F1"]
    series = {"model": model_metrics, **baselines}
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    for k, (name, metrics) in enumerate(series.items()):
        values = [_class_f1(metrics, c) for c in classes] + [float(metrics.get("macro_f1") or 0.0)]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels=groups, rotation=30, ha="right")
    # Headroom above 1.0 for a one-row legend, so it never hides a bar.
    ax.set_ylim(0.0, 1.15)
    ax.set_ylabel("F1")
    ax.set_title("F1 on the validation window: model vs baselines")
    ax.legend(fontsize="small", loc="upper center", ncol=len(series))
    return _save(plt, fig, path)


def _curves_figure(plt: Any, path: Path, history: dict[str, list[float]]) -> Path:
    from matplotlib.ticker import MaxNLocator

    panels = [
        keys
        # Keras calls the early-stopping set "val_"; it is not the validation window.
        for keys in (("loss", "val_loss"), ("accuracy", "val_accuracy"))
        if any(history.get(k) for k in keys)
    ]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=_FIGSIZE, squeeze=False)
    if not panels:
        # Still write the figure: report.md links it, and a broken image is worse
        # than one that says why it is empty.
        axes[0][0].text(0.5, 0.5, "no training history", ha="center", va="center")
        axes[0][0].set_axis_off()
    for ax, keys in zip(axes[0], panels, strict=False):
        for key in keys:
            values = history.get(key) or []
            if values:
                ax.plot(
                    range(1, len(values) + 1), values, label=key.replace("val_", "early-stopping ")
                )
        ax.set_xlabel("epoch")
        # Epochs are whole numbers; short runs otherwise get ticks like 1.5.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(keys[0])
        ax.legend(fontsize="small")
    return _save(plt, fig, path)


def _distribution_figure(
    plt: Any, path: Path, classes: Sequence[str], distribution: dict[str, dict[str, int]]
) -> Path:
    # Classes the caller did not list still show up rather than vanish silently.
    names = list(classes) + sorted(
        {c for counts in distribution.values() for c in counts} - set(classes)
    )
    splits = [s for s in ("train", "validation", "predicted") if s in distribution] + [
        s for s in distribution if s not in ("train", "validation", "predicted")
    ]
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    x = np.arange(len(names))
    width = 0.8 / max(len(splits), 1)
    for k, split in enumerate(splits):
        counts = np.array([distribution[split].get(c, 0) for c in names], dtype=float)
        # Shares, not counts: training spans many cutoffs and dwarfs validation.
        shares = counts / counts.sum() if counts.sum() > 0 else counts
        ax.bar(x + (k - (len(splits) - 1) / 2) * width, shares, width, label=split)
    ax.set_xticks(x, labels=names, rotation=30, ha="right")
    ax.set_ylabel("share of rows")
    ax.set_title("Segment distribution")
    if splits:
        ax.legend(fontsize="small")
    return _save(plt, fig, path)


def _class_f1(metrics: dict[str, Any], name: str) -> float:
    """For bars: a class without support draws as 0 (the tables say "no support")."""
    return float(_class_f1_or_none(metrics, name) or 0.0)


def _class_f1_or_none(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get("per_class", {}).get(name, {}).get("f1")
    return None if value is None else float(value)


def _reliability_figure(
    plt: Any, path: Path, classes: Sequence[str], probs: np.ndarray, y: np.ndarray, bins: int = 10
) -> Path:
    """Calibration: per class, mean predicted probability against the observed share."""
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    edges = np.linspace(0.0, 1.0, bins + 1)
    for k, name in enumerate(classes):
        if not (y == k).any():
            continue  # no support: nothing to be calibrated against
        p = probs[:, k]
        which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            inside = which == b
            if inside.sum() >= 5:  # a dot from fewer rows is noise
                xs.append(float(p[inside].mean()))
                ys.append(float((y[inside] == k).mean()))
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed share")
    ax.set_title("Reliability (validation)")
    ax.legend(fontsize="small")
    return _save(plt, fig, path)


def _iso(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ms)


def _metrics_table(
    classes: Sequence[str], model_metrics: dict[str, Any], baselines: dict[str, dict[str, Any]]
) -> list[str]:
    series = {"model": model_metrics, **baselines}
    lines = [
        "| metric | " + " | ".join(series) + " |",
        "|---|" + "---:|" * len(series),
    ]
    rows: list[tuple[str, list[float | None]]] = [
        ("high_value F1 (primary)", [m.get("high_value_f1") for m in series.values()]),
        ("weighted F1", [m.get("weighted_f1") for m in series.values()]),
        ("macro-F1", [m.get("macro_f1") for m in series.values()]),
        ("accuracy", [m.get("accuracy") for m in series.values()]),
    ]
    rows += [(f"F1 {c}", [_class_f1_or_none(m, c) for m in series.values()]) for c in classes]
    for label, values in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(v) for v in values) + " |")
    n = model_metrics.get("n")
    if n is not None:
        lines += ["", f"Validation rows: {n}."]
    return lines


def _training_section(training: dict[str, Any]) -> list[str]:
    lines = ["## Training data", ""]
    window = training.get("window") or {}
    if window:
        lines.append(
            f"- events window: {_iso(window.get('from_ms'))} to {_iso(window.get('until_ms'))} UTC"
        )
    if training.get("source"):
        lines.append(f"- source: {training['source']}")
    for key, label in (
        ("events", "events"),
        ("examples", "training (fit) examples"),
        ("early_stopping_examples", "early-stopping examples (pick the epoch only)"),
        ("validation_examples", "validation examples (scored here and by the gate, never fit)"),
        ("top_quantile", "high_value quantile"),
    ):
        if training.get(key) is not None:
            lines.append(f"- {label}: {training[key]}")
    cutoffs = training.get("cutoffs")
    if cutoffs:
        lines.append(f"- cutoffs: {len(cutoffs)} ({_iso(cutoffs[0])} to {_iso(cutoffs[-1])})")
    if training.get("early_stopping_cutoff_ms") is not None:
        lines.append(f"- early-stopping cutoff: {_iso(training['early_stopping_cutoff_ms'])}")
    if training.get("validation_cutoff_ms") is not None:
        lines.append(f"- validation cutoff: {_iso(training['validation_cutoff_ms'])}")
    for key, label in (("horizon_ms", "horizon"), ("step_ms", "step")):
        if training.get(key) is not None:
            lines.append(f"- {label}: {int(training[key]) / DAY_MS:g} days")
    return [*lines, ""]


def write_report(
    out_dir: Path,
    *,
    version: str,
    classes: Sequence[str],
    model_metrics: dict[str, Any],
    baselines: dict[str, dict[str, Any]],
    history: dict[str, list[float]],
    distribution: dict[str, dict[str, int]],
    gate: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    checks: dict[str, Any] | None = None,
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
    drift_reference: dict[str, Any] | None = None,
    value: tuple[dict[str, np.ndarray], np.ndarray] | None = None,
) -> list[Path]:
    """Write the four figures and ``report.md`` into ``out_dir``; return the paths written.

    ``model_metrics`` and each of ``baselines`` are
    :func:`model.training.evaluate.classification_report` dicts on the same
    validation rows; ``distribution`` maps "train", "validation" (and
    optionally "predicted") to class counts. ``checks`` are the
    directional and archetype results (:func:`model.training.assess.behaviour_checks`),
    ``calibration`` the validation probabilities and labels, ``value`` the
    rankings by predicted spend (name -> per row) and the realised spend.
    """
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    confusion = model_metrics.get("confusion")
    if confusion is None:
        confusion = np.zeros((len(classes), len(classes)))
    images = [
        ("Confusion matrix", _confusion_figure(plt, out_dir / CONFUSION_PNG, classes, confusion)),
        (
            "F1 vs baselines",
            _f1_figure(plt, out_dir / F1_PNG, classes, model_metrics, baselines),
        ),
        ("Training curves", _curves_figure(plt, out_dir / CURVES_PNG, history)),
        (
            "Segment distribution",
            _distribution_figure(plt, out_dir / DISTRIBUTION_PNG, classes, distribution),
        ),
    ]
    if calibration is not None:
        probs, y = calibration
        images.append(
            ("Reliability", _reliability_figure(plt, out_dir / RELIABILITY_PNG, classes, probs, y))
        )
    if value is not None:
        rankings, realised = value
        images.append(
            ("Cumulative gains", gains_figure(plt, out_dir / GAINS_PNG, rankings, realised))
        )
        if "model" in rankings:
            images.append(
                (
                    "Decile calibration",
                    decile_figure(plt, out_dir / DECILES_PNG, rankings["model"], realised),
                )
            )

    lines = [f"# Training report: {version}", ""]
    lines += ["## Validation metrics", ""]
    lines += _metrics_table(classes, model_metrics, baselines)
    lines.append("")
    lines += value_section(model_metrics)
    lines += calibration_section(model_metrics)
    if gate is not None:
        lines += gate_section(gate)
    if checks:
        lines += directional_section(checks.get("directional", []))
        lines += archetype_section(checks.get("archetypes", []), checks.get("pairs", []))
    if training is not None:
        lines += _training_section(training)
    if drift_reference:
        lines += drift_section(drift_reference)
    lines += ["## Figures", ""]
    for title, path in images:
        # Relative links: the report moves with its version directory.
        lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    report = out_dir / REPORT_MD
    report.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    return [path for _, path in images] + [report]
