"""The promotion gate: may a newly trained model replace the serving one?

It measures what segments are for, on the data the model will serve:

* **One primary metric** (:data:`model.training.evaluate.PRIMARY_METRIC`, high_value
  F1; the module docstring of :mod:`model.training.evaluate` says why), computed over
  classes with support only. The candidate, the serving model and every
  baseline are scored with it on the candidate's validation rows (the latest
  window of the candidate's own data).
* **Baselines:** the candidate must beat the simple rules (RFM, "previous
  segment"): otherwise the network is not earning its keep. The classic CLV
  model (BG/NBD + Gamma-Gamma) is the field's reference, and the floor: the
  candidate must match it, i.e. trail it by at most :data:`REFERENCE_MARGIN`.
  Why a margin: high_value is a fifth of the buyers, often a few hundred
  rows, where F1 moves by several points from sampling alone; and CLV is not
  something this service can serve instead, so refusing a candidate that
  merely ties it would leave users on an older model that is worse than both.
* **The serving model** has a home advantage only when it was trained on the
  same population: real events, the same feature schema and classes, and a
  training distribution within PSI 0.25 of the candidate's rows on every
  feature. Then the candidate may trail it by ``tolerance`` (churning models
  for noise helps nobody). Otherwise (the bootstrap, a synthetic model,
  another shop's model) it is scored like any baseline and must be beaten.
* **Synthetic never replaces real** unless the user asks (``allow_synthetic``).
* **Behaviour:** every directional expectation under its threshold, and every
  archetype where the label definition puts it (:mod:`model.training.assess`).
* **Calibration:** consumers, rule audiences and hysteresis read the published
  probabilities, so each class with support must have an ECE of at most
  :data:`model.training.assess.MAX_ECE` on the validation rows, beyond the
  ECE that sampling alone gives a calibrated model on that many rows
  (:func:`model.training.ranking.ece_noise_floor`).

Each verdict explains itself, check by check, in ``gate.json``, the manifest
and the report.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from model.drift import SIGNIFICANT_PSI, bin_counts, psi, reference
from model.registry import MANIFEST, current_version, load_version
from model.segments import weighted
from model.training.assess import MAX_ECE
from model.training.evaluate import PRIMARY_METRIC, classification_report, primary

log = logging.getLogger(__name__)

#: Baselines the candidate must match (within REFERENCE_MARGIN) rather than beat.
REFERENCE_BASELINES = frozenset({"clv"})
REFERENCE_MARGIN = 0.05


@dataclass
class Verdict:
    outcome: str  # "promoted" | "candidate"
    reason: str
    version: str
    candidate_f1: float  # the primary metric's value, under its historical name
    current_f1: float | None
    baselines_f1: dict[str, float] = field(default_factory=dict)
    primary_metric: str = PRIMARY_METRIC
    rows: int = 0
    no_support: list[str] = field(default_factory=list)
    serving: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome == "promoted"


def _scores(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("high_value_f1", "weighted_f1", "macro_f1", "accuracy")
    return {k: report.get(k) for k in keys}


def max_psi(reference: dict[str, Any] | None, x: np.ndarray, names: list[str]) -> float | None:
    """The largest per-feature PSI of rows ``x`` against a manifest's drift reference."""
    if not reference:
        return None
    worst = 0.0
    for i, name in enumerate(names):
        ref = reference.get("features", {}).get(name)
        if ref is None:
            return None
        counts = bin_counts(ref, x[:, i])
        actual = counts / max(counts.sum(), 1)
        worst = max(worst, psi(np.asarray(ref["proportions"]), actual))
    return worst


def score_serving(
    model_dir: Path, candidate_dir: Path, manifest: dict[str, Any]
) -> dict[str, Any] | None:
    """The serving model on the candidate's rows, and whether it is on home ground."""
    version = current_version(model_dir)
    if version is None or version == candidate_dir.name:
        return None
    try:
        serving = load_version(model_dir / version)
    except Exception as exc:  # an unusable serving model must not block a good candidate
        log.warning("serving model %s cannot be scored (%s)", version, exc)
        return {"version": version, "usable": False, "home": False, "why": str(exc)}
    classes = list(manifest["classes"])
    with np.load(candidate_dir / "validation.npz") as val:
        x, y = val["x"], val["y"]
    probs = serving.scorer.predict(x)
    weights = serving.decision_weights
    if weights:
        probs = weighted(probs, np.array([weights.get(c, 1.0) for c in serving.classes]))
    # Scored like a baseline: its answer among the classes the candidate's rows
    # can hold (a class the candidate lacks has no rows to be right about).
    shared = [serving.classes.index(c) for c in classes if c in serving.classes]
    names = [c for c in classes if c in serving.classes]
    pred = np.array([classes.index(names[i]) for i in probs[:, shared].argmax(axis=1)])
    report = classification_report(y, pred, classes)
    kind = serving.manifest.get("training", {}).get("source_kind", "unknown")
    # Like with like: the serving model's own validation rows (users at a
    # cutoff) against the candidate's. The drift reference is shaped like the
    # worker's inputs (users at an event), so it would not compare.
    drift = None
    served_rows = model_dir / version / "validation.npz"
    if served_rows.exists():
        with np.load(served_rows) as own:
            drift = max_psi(reference(own["x"]), x, list(manifest["features"]))
    why: list[str] = []
    if kind != "events":
        why.append(f"trained on {kind} data")
    if manifest["training"].get("source_kind") != "events":
        why.append("the candidate is not trained on real events")
    if list(serving.classes) != classes:
        why.append(f"other classes {list(serving.classes)}")
    if drift is None:
        why.append("no validation rows to compare populations with")
    elif drift > SIGNIFICANT_PSI:
        why.append(f"its training population differs (max PSI {drift:.2f} > {SIGNIFICANT_PSI})")
    return {
        "version": version,
        "usable": True,
        "source_kind": kind,
        "max_psi": drift,
        "home": not why,
        "why": "; ".join(why) or "same population: real events, same schema, PSI within 0.25",
        "report": report,
    }


def decide(
    metric: str,
    candidate: float,
    baselines: dict[str, float],
    serving: dict[str, Any] | None,
    behaviour: dict[str, Any],
    *,
    tolerance: float,
    synthetic_over_real: bool,
    calibration: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Pure rule: one entry per check, each with ``passed`` and a sentence."""
    checks: list[dict[str, Any]] = []
    if calibration is not None:
        # Beyond what sampling alone gives a calibrated model on these rows
        # (model.training.ranking.ece_noise_floor); the raw ECE is reported too.
        beyond = {c: r.get("ece_beyond_noise", r["ece"]) for c, r in calibration.items()}
        supported = [c for c, r in calibration.items() if r["support"]]
        over = {c: beyond[c] for c in supported if beyond[c] > MAX_ECE}
        worst = max((beyond[c] for c in supported), default=0.0)
        raw = max((calibration[c]["ece"] for c in supported), default=0.0)
        checks.append(
            {
                "check": "calibrated",
                "passed": not over,
                "detail": f"ECE beyond sampling noise at most {MAX_ECE} on every class with "
                f"support (raw ECE up to {raw:.4f}) "
                + (f"(worst {worst:.4f})" if not over else f"but {_fmt_ece(over)}"),
            }
        )
    for name, value in baselines.items():
        if name in REFERENCE_BASELINES:
            checks.append(
                {
                    "check": f"matches {name}",
                    "passed": candidate >= value - REFERENCE_MARGIN,
                    "detail": f"{metric} {candidate:.4f} vs {name} {value:.4f} "
                    f"(may trail by {REFERENCE_MARGIN})",
                }
            )
            continue
        checks.append(
            {
                "check": f"beats {name}",
                "passed": candidate > value,
                "detail": f"{metric} {candidate:.4f} vs {name} {value:.4f}",
            }
        )
    if serving is not None and serving.get("usable"):
        _, value = primary(serving["report"], metric)
        if serving["home"]:
            ok = candidate >= value - tolerance
            rule = f"within {tolerance} of the serving model (home ground: {serving['why']})"
        else:
            ok = candidate > value
            rule = f"beats the serving model, scored as a baseline ({serving['why']})"
        checks.append(
            {
                "check": f"serving {serving['version']}",
                "passed": ok,
                "detail": f"{metric} {candidate:.4f} vs {value:.4f}: must be {rule}",
            }
        )
    if synthetic_over_real:
        checks.append(
            {
                "check": "synthetic over real",
                "passed": False,
                "detail": "a model trained on synthetic data does not replace one trained on "
                "real events unless asked (segmenter train --force)",
            }
        )
    for d in behaviour.get("directional", []):
        if d.get("applicable"):
            checks.append(
                {
                    "check": f"directional {d['name']}",
                    "passed": bool(d["passed"]),
                    "detail": f"{d['description']}: {d['rate']:.2%} of rows violate "
                    f"(threshold {d['threshold']:.0%})",
                }
            )
    misplaced = [
        f"{a['name']} -> {a['got']} (expected {'/'.join(a['expected'])})"
        for a in behaviour.get("archetypes", [])
        if not a["passed"]
    ] + [p["name"] for p in behaviour.get("pairs", []) if not p["passed"]]
    checks.append(
        {
            "check": "archetypes",
            "passed": not misplaced,
            "detail": "every archetype where the label definition puts it"
            if not misplaced
            else "misplaced: " + "; ".join(misplaced),
        }
    )
    return checks


def _fmt_ece(over: dict[str, float]) -> str:
    return ", ".join(f"{c} {e:.4f}" for c, e in over.items())


def judge(
    model_dir: Path,
    candidate_dir: Path,
    tolerance: float = 0.01,
    *,
    metric: str = PRIMARY_METRIC,
    allow_synthetic: bool = False,
) -> Verdict:
    """Decide, and record the verdict beside the model (gate.json, manifest, report)."""
    from model.training.train import render_report

    manifest = orjson.loads((candidate_dir / MANIFEST).read_bytes())
    metrics = manifest["metrics"]
    metric, candidate = primary(metrics, metric)
    baselines = {
        name: primary(report, metric)[1] for name, report in metrics.get("baselines", {}).items()
    }
    serving = score_serving(model_dir, candidate_dir, manifest)
    synthetic_over_real = (
        not allow_synthetic
        and serving is not None
        and serving.get("source_kind") == "events"
        and manifest["training"].get("source_kind") != "events"
    )
    checks = decide(
        metric,
        candidate,
        baselines,
        serving,
        metrics.get("checks", {}),
        tolerance=tolerance,
        synthetic_over_real=synthetic_over_real,
        calibration=metrics.get("calibration"),
    )
    failed = [c for c in checks if not c["passed"]]
    current = primary(serving["report"], metric)[1] if serving and serving.get("usable") else None
    if failed:
        reason = "; ".join(f"{c['check']}: {c['detail']}" for c in failed)
    else:
        beaten = ", ".join(f"{n} {v:.4f}" for n, v in baselines.items())
        against = "no serving model" if current is None else f"serving {current:.4f}"
        reason = (
            f"{metric} {candidate:.4f} against baselines ({beaten}) and {against}; "
            "directional checks and archetypes pass"
        )
    scores = {"candidate": _scores(metrics)}
    scores.update({n: _scores(r) for n, r in metrics.get("baselines", {}).items()})
    # Ranking by value, beside the classes (model.training.ranking): reported, not gated.
    value = metrics.get("value") or {}
    for name, key in (("candidate", "model"), ("clv", "clv")):
        if name in scores and key in value:
            scores[name].update(
                {k: value[key].get(k) for k in ("normalised_gini", "top20_capture")}
            )
    if serving and serving.get("usable"):
        scores[f"serving {serving['version']}"] = _scores(serving["report"])
    verdict = Verdict(
        outcome="candidate" if failed else "promoted",
        reason=reason,
        version=candidate_dir.name,
        candidate_f1=candidate,
        current_f1=current,
        baselines_f1=baselines,
        primary_metric=metric,
        rows=int(metrics.get("n", 0)),
        no_support=list(metrics.get("no_support", [])),
        serving=None if serving is None else {k: v for k, v in serving.items() if k != "report"},
        checks=checks,
        scores=scores,
    )
    record: dict[str, Any] = asdict(verdict)
    # Which value head the candidate serves (network, BG/NBD + Gamma-Gamma or the
    # blend), chosen on the same validation rows (model.training.stacking).
    record["value_head"] = metrics.get("value_source")
    (candidate_dir / "gate.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    manifest["gate"] = record
    (candidate_dir / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    render_report(candidate_dir, gate=record)
    return verdict
