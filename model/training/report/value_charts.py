"""The report's value and calibration parts: ranking tables, the cumulative-gains and decile
charts (as google/lifetime_value draws them), per-class ECE and Brier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.training.evaluate import fmt
from model.training.ranking import deciles, gains_curve

GAINS_PNG = "cumulative_gains.png"
DECILES_PNG = "deciles.png"
# Small figures: a report holds several, and they live beside every model version.
_FIGSIZE = (6.0, 4.0)
_DPI = 100


def value_section(metrics: dict[str, Any]) -> list[str]:
    """Ranking of realised spend: the model, the CLV model and every single raw input."""
    value = metrics.get("value")
    if not value:
        return []
    lines = [
        "## Ranking by value",
        "",
        f"Realised spend in the label window, ranked among the validation rows of "
        f"{value.get('population', 'customers')} ({value.get('rows', 0)} rows). "
        "Normalised Gini: 1 = ranks as hindsight would, 0 = as chance.",
        "",
        "| ranking | normalised Gini | top-20% capture | high_value AUC |",
        "|---|---:|---:|---:|",
    ]
    series: list[tuple[str, dict[str, Any]]] = []
    if "model" in value:
        series.append(("model: predicted spend", value["model"]))
    if "clv" in value:
        series.append(("BG/NBD + Gamma-Gamma", value["clv"]))
    series += [(f"input `{k}`", v) for k, v in value.get("single_inputs", {}).items()]
    for name, r in series:
        lines.append(
            f"| {name} | {fmt(r.get('normalised_gini'))} | {fmt(r.get('top20_capture'))} "
            f"| {fmt(r.get('high_value_auc'))} |"
        )
    lines += source_lines(metrics.get("value_source"))
    nxt = metrics.get("next_order") or {}
    if nxt.get("median_abs_error_days") is not None:
        lines += [
            "",
            f"`expected_next_order_at`: median absolute error "
            f"{nxt['median_abs_error_days']:.1f} days over {nxt['rows']} validation rows "
            "that ordered within the window.",
        ]
    return [*lines, ""]


def source_lines(choice: dict[str, Any] | None) -> list[str]:
    """Which value head is served: the network, BG/NBD + Gamma-Gamma, or the blend."""
    if not choice:
        return []
    lines = [
        "",
        f"Value head served: **{choice['chosen']}** ({choice['rule']}; model.training.stacking).",
        "",
        "| value head | high_value F1 | worst ECE beyond noise | normalised Gini, all rows |",
        "|---|---:|---:|---:|",
    ]
    for name, j in choice.get("candidates", {}).items():
        lines.append(
            f"| {name} | {fmt(j.get('high_value_f1'))} | {fmt(j.get('max_ece_beyond_noise'))} "
            f"| {fmt(j.get('gini'))} |"
        )
    return lines


def calibration_section(metrics: dict[str, Any]) -> list[str]:
    calibration = metrics.get("calibration")
    if not calibration:
        return []
    bound = metrics.get("calibration_max_ece")
    lines = [
        "## Calibration of the published probabilities",
        "",
        "ECE over 10 equal-width bins, one class against the rest"
        + (f"; the gate's bound is {bound}." if bound is not None else "."),
        "",
        "The noise floor is the ECE a perfectly calibrated model stays under, by "
        "sampling alone, in 9 draws of 10 on these rows; the gate bounds what lies "
        "beyond it.",
        "",
        "| class | support | mean P | observed | ECE | noise floor | Brier |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c, r in calibration.items():
        floor = r.get("ece_noise_floor")
        lines.append(
            f"| {c} | {r['support']} | {r['mean_probability']:.4f} | {r['observed']:.4f} "
            f"| {r['ece']:.4f} | {fmt(floor, 4)} | {r['brier']:.4f} |"
        )
    return [*lines, ""]


def gains_figure(
    plt: Any, path: Path, rankings: dict[str, np.ndarray], realised: np.ndarray
) -> Path:
    """Cumulative gains: share of realised spend against share of customers taken."""
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    x, y = gains_curve(realised, realised)
    ax.plot(x, y, color="black", linewidth=1, label="hindsight")
    for name, predicted in rankings.items():
        x, y = gains_curve(predicted, realised)
        ax.plot(x, y, label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xlabel("share of customers, highest predicted first")
    ax.set_ylabel("share of realised spend")
    ax.set_title("Cumulative gains (validation)")
    ax.legend(fontsize="small")
    return save(plt, fig, path)


def decile_figure(plt: Any, path: Path, predicted: np.ndarray, realised: np.ndarray) -> Path:
    """Mean predicted against mean realised spend per decile of predicted spend."""
    table = deciles(predicted, realised)
    fig, ax = plt.subplots(figsize=_FIGSIZE)
    idx = np.arange(len(table))
    ax.bar(idx - 0.2, [d["predicted"] for d in table], width=0.4, label="predicted")
    ax.bar(idx + 0.2, [d["realised"] for d in table], width=0.4, label="realised")
    ax.set_xticks(idx, [str(d["decile"]) for d in table])
    ax.set_xlabel("decile of predicted spend (1 = highest)")
    ax.set_ylabel("mean spend in the window")
    ax.set_title("Decile calibration (validation)")
    ax.legend(fontsize="small")
    return save(plt, fig, path)


def save(plt: Any, fig: Any, path: Path) -> Path:
    """Write a figure and close it (the report's figures all go through here)."""
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    # Close explicitly: pyplot keeps every figure alive otherwise, and the
    # retrain job writes reports for as long as it runs.
    plt.close(fig)
    return path
