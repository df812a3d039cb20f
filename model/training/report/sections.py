"""The report's tables about trust: gate checks, directional checks, archetypes, drift reference.

Markdown only (the figures are in :mod:`model.training.report.render`). Each function takes the
JSON the gate and training already wrote, so a report can be re-rendered from
an artifact's own files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from model.training.evaluate import fmt


def gate_section(gate: dict[str, Any]) -> list[str]:
    lines = ["## Promotion gate", "", f"**{gate.get('outcome', 'unknown')}**"]
    if gate.get("reason"):
        lines[-1] += f": {gate['reason']}"
    metric = gate.get("primary_metric", "macro_f1")
    lines += ["", f"Primary metric: `{metric}`, on {gate.get('rows', '?')} validation rows."]
    if gate.get("no_support"):
        lines.append(f"Classes with no support in the window: {', '.join(gate['no_support'])}.")
    scores = gate.get("scores") or {}
    if scores:
        lines += ["", "| model | high_value F1 | weighted F1 | macro-F1 | accuracy |"]
        lines.append("|---|---:|---:|---:|---:|")
        for name, s in scores.items():
            cells = [fmt(s.get(k)) for k in ("high_value_f1", "weighted_f1", "macro_f1")]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(s.get('accuracy'))} |")
    serving = gate.get("serving")
    if serving:
        home = "home ground" if serving.get("home") else "scored as a baseline"
        lines += ["", f"Serving model {serving.get('version')}: {home} ({serving.get('why')})."]
    checks = gate.get("checks") or []
    if checks:
        lines += ["", "| check | passed | detail |", "|---|:---:|---|"]
        for c in checks:
            lines.append(f"| {c['check']} | {'yes' if c['passed'] else '**no**'} | {c['detail']} |")
    return [*lines, ""]


def directional_section(directional: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "## Directional checks",
        "",
        "Change one input that can only push one way; count rows where the model "
        "moves the other way (CheckList, Ribeiro et al. 2020).",
        "",
        "| expectation | rows | violations | rate | threshold | worst move | passed |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for d in directional:
        if not d.get("applicable"):
            lines.append(f"| {d['description']} | - | - | not applicable | - | - | - |")
            continue
        lines.append(
            f"| {d['description']} | {d['rows']} | {d['violations']} | {d['rate']:.2%} | "
            f"{d['threshold']:.0%} | {max(d['worst'], 0.0):.4f} | "
            f"{'yes' if d['passed'] else '**no**'} |"
        )
    return [*lines, ""]


def archetype_section(
    archetypes: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]]
) -> list[str]:
    lines = [
        "## Archetypes",
        "",
        "The development suite is what models were built against; the release suite was "
        "written once from the label definition and is never changed to make a model pass "
        "(`model/training/behaviour/archetypes_release.py`). The gate checks both.",
        "",
        "| suite | customer | expected | got | probabilities | passed |",
        "|---|---|---|---|---|:---:|",
    ]
    for a in archetypes:
        probs = ", ".join(f"{c} {p:.2f}" for c, p in a["probabilities"].items())
        passed = (
            f"not judged ({a.get('not_judged')})"
            if not a["applicable"]
            else ("yes" if a["passed"] else "**no**")
        )
        lines.append(
            f"| {a.get('suite', 'development')} | {a['description']} | "
            f"{'/'.join(a['expected'])} | {a['got']} | {probs} | {passed} |"
        )
    if pairs:
        lines += [
            "",
            "| suite | pair | segment | P (higher) | P (lower) | passed |",
            "|---|---|---|---:|---:|:---:|",
        ]
        for p in pairs:
            if not p.get("applicable"):
                continue
            lines.append(
                f"| {p.get('suite', 'development')} | {p['description']} | {p['segment']} | "
                f"{p['higher']:.4f} | {p['lower']:.4f} | "
                f"{'yes' if p['passed'] else '**no**'} |"
            )
    return [*lines, ""]


def drift_section(reference: dict[str, Any]) -> list[str]:
    """The training distribution the worker's drift metrics compare live inputs with."""
    lines = [
        "## Drift reference",
        "",
        f"Training distribution of each model input over {reference.get('rows', '?')} rows "
        "(log1p scale for counts, money and days). The worker exports the PSI of its "
        "live inputs against these bins as `segmenter_feature_drift_psi`; inputs outside "
        "[min, max] count in `segmenter_inputs_out_of_range_ratio` and are clipped.",
        "",
        "| feature | min | max | bins | largest bin share |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, f in reference.get("features", {}).items():
        shares = f.get("proportions") or [0.0]
        lines.append(
            f"| {name} | {f['min']:.3f} | {f['max']:.3f} | {len(shares)} | {max(shares):.2f} |"
        )
    return [*lines, ""]
