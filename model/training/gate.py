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
from model.registry import MANIFEST, current_version, load_version, promotion_history
from model.scorer import TRAITS
from model.segments import weighted
from model.training.assess import MAX_ECE
from model.training.evaluate import PRIMARY_METRIC, classification_report, primary
from model.training.evidence import LEVEL, log_loss, paired_f1_difference, per_class_differences
from model.training.ranking import normalised_gini

log = logging.getLogger(__name__)

#: Baselines the candidate must match (within REFERENCE_MARGIN) rather than beat.
REFERENCE_BASELINES = frozenset({"clv"})
REFERENCE_MARGIN = 0.05
#: The incumbent is the best of this many last promoted models (the serving one included).
INCUMBENTS = 5
#: Guards against the incumbent: per-class F1 (low end of the paired interval),
#: log-loss (nats) and the normalised Gini of predicted spend.
SEGMENT_GUARD = 0.05
LOG_LOSS_GUARD = 0.02
GINI_GUARD = 0.03


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


def _predictions(
    scorer: Any, weights: dict[str, float] | None, classes: list[str], own: tuple[str, ...], x: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(decided class index in ``classes``, probabilities over ``classes``, predicted spend)."""
    scores = scorer.score(x)
    probs = scores.probabilities
    if weights:
        probs = weighted(probs, np.array([weights.get(c, 1.0) for c in own]))
    # Its answer among the classes the candidate's rows can hold (a class the
    # candidate lacks has no rows to be right about).
    shared = [own.index(c) for c in classes if c in own]
    names = [c for c in classes if c in own]
    pred = np.array([classes.index(names[i]) for i in probs[:, shared].argmax(axis=1)])
    published = np.zeros((len(x), len(classes)))
    for c in names:
        published[:, classes.index(c)] = scores.probabilities[:, own.index(c)]
    spend = scores.traits[:, TRAITS.index("predicted_spend_90d")]
    return pred, published, None if np.isnan(spend).all() else spend


def score_version(
    model_dir: Path, version: str, manifest: dict[str, Any], x: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    """A registry version on the candidate's rows, and whether it is on home ground."""
    try:
        served = load_version(model_dir / version)
        classes = list(manifest["classes"])
        pred, probs, spend = _predictions(
            served.scorer, served.decision_weights, classes, served.classes, x
        )
    except Exception as exc:  # reported: the caller decides what an unusable model means
        log.warning("model %s cannot be scored on the candidate's rows (%s)", version, exc)
        return {"version": version, "usable": False, "home": False, "why": str(exc)}
    report = classification_report(y, pred, classes)
    kind = served.manifest.get("training", {}).get("source_kind", "unknown")
    # Like with like: the model's own validation rows (users at a cutoff)
    # against the candidate's. The drift reference is shaped like the
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
    if list(served.classes) != classes:
        why.append(f"other classes {list(served.classes)}")
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
        "pred": pred,
        "probs": probs,
        "spend": spend,
    }


def incumbents(
    model_dir: Path, candidate_dir: Path, manifest: dict[str, Any], x: np.ndarray, y: np.ndarray
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the serving model, the last :data:`INCUMBENTS` promoted models), each scored on
    the candidate's rows; the serving one first in the list when there is one."""
    serving_version = current_version(model_dir)
    versions: list[str] = []
    if serving_version is not None and serving_version != candidate_dir.name:
        versions.append(serving_version)
    for entry in reversed(promotion_history(model_dir)):
        v = entry.get("version")
        if len(versions) >= INCUMBENTS:
            break
        if v and v not in versions and v != candidate_dir.name and (model_dir / v).is_dir():
            versions.append(v)
    scored = [score_version(model_dir, v, manifest, x, y) for v in versions]
    serving = scored[0] if scored and scored[0]["version"] == serving_version else None
    return serving, scored


def best_incumbent(scored: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The best usable one by ``metric`` on the candidate's rows: the bar a candidate
    must clear, so that a chain of small losses cannot add up (no ratchet)."""
    usable = [s for s in scored if s.get("usable")]
    if not usable:
        return None
    return max(usable, key=lambda s: primary(s["report"], metric)[1])


def guard_checks(
    y: np.ndarray,
    classes: list[str],
    candidate: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    incumbent: dict[str, Any],
    realised: np.ndarray | None,
) -> list[dict[str, Any]]:
    """What users read besides the primary metric, each with its bound, against the incumbent."""
    pred, probs, spend = candidate
    name = incumbent["version"]
    checks = []
    for c, d in per_class_differences(y, pred, incumbent["pred"], classes).items():
        checks.append(
            {
                "check": f"guard {c} F1",
                "passed": d["low"] > -SEGMENT_GUARD,
                "detail": f"{c} F1 {d['difference']:+.4f} against {name} "
                f"({LEVEL:.0%} interval [{d['low']:+.4f}, {d['high']:+.4f}] on "
                f"{d['support']} rows; its low end must be above -{SEGMENT_GUARD})",
                "interval": d,
            }
        )
    ours, theirs = log_loss(probs, y), log_loss(incumbent["probs"], y)
    checks.append(
        {
            "check": "guard log-loss",
            "passed": ours <= theirs + LOG_LOSS_GUARD,
            "detail": f"log-loss {ours:.4f} against {name} {theirs:.4f} "
            f"(may exceed it by {LOG_LOSS_GUARD})",
        }
    )
    if realised is not None and spend is not None and incumbent.get("spend") is not None:
        g_ours, g_theirs = (
            normalised_gini(spend, realised),
            normalised_gini(incumbent["spend"], realised),
        )
        if g_ours is not None and g_theirs is not None:
            checks.append(
                {
                    "check": "guard Gini",
                    "passed": g_ours >= g_theirs - GINI_GUARD,
                    "detail": f"normalised Gini of predicted spend {g_ours:.4f} against "
                    f"{name} {g_theirs:.4f} (may trail it by {GINI_GUARD})",
                }
            )
    return checks


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
    guards: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Pure rule: one entry per check, each with ``passed`` and a sentence.

    ``serving`` is the incumbent: the best of the last promoted models on the
    candidate's rows. With ``evidence`` (the paired interval of the candidate
    minus it), home ground asks the interval's low end to be above
    ``-tolerance``, not the point: a noise-sized loss is not promoted.
    """
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
    if serving is not None and not serving.get("usable"):
        checks.append(
            {
                "check": "comparable",
                "passed": False,
                "detail": f"the serving model {serving['version']} cannot be scored on the "
                f"candidate's rows ({serving['why']}): nothing says the candidate is not worse "
                "(segmenter train --force promotes it anyway)",
            }
        )
    if serving is not None and serving.get("usable"):
        _, value = primary(serving["report"], metric)
        ev = serving.get("evidence")
        role = serving.get("role", "the serving model")
        interval = ""
        if ev is not None:
            interval = (
                f" (difference {ev['difference']:+.4f}, {ev['level']:.0%} paired interval "
                f"[{ev['low']:+.4f}, {ev['high']:+.4f}] on {ev['rows']} rows)"
            )
        if serving["home"] and ev is not None:
            ok = ev["low"] > -tolerance
            rule = (
                f"the interval's low end above -{tolerance} against {role} "
                f"(home ground: {serving['why']})"
            )
        elif serving["home"]:
            ok = candidate >= value - tolerance
            rule = f"within {tolerance} of {role} (home ground: {serving['why']})"
        else:
            ok = candidate > value
            rule = f"beats {role}, scored as a baseline ({serving['why']})"
        checks.append(
            {
                "check": f"serving {serving['version']}",
                "passed": ok,
                "detail": f"{metric} {candidate:.4f} vs {value:.4f}{interval}: must be {rule}",
            }
        )
    checks += guards or []
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
    with np.load(candidate_dir / "validation.npz") as val:
        x, y = val["x"], val["y"]
        realised = val["spend"] if "spend" in val.files else None
    classes = list(manifest["classes"])
    current, scored = incumbents(model_dir, candidate_dir, manifest, x, y)
    synthetic_over_real = (
        not allow_synthetic
        and current is not None
        and current.get("source_kind") == "events"
        and manifest["training"].get("source_kind") != "events"
    )
    # The bar: the best of the last promoted models on these rows, not only the
    # serving one, so thirty small losses cannot add up. A serving model that
    # cannot be scored is refused as such (decide's "comparable").
    best = best_incumbent(scored, metric)
    serving: dict[str, Any] | None = current
    guards: list[dict[str, Any]] = []
    if current is None or current.get("usable"):
        serving = best
    if serving is not None and serving.get("usable"):
        candidate_model = load_version(candidate_dir)
        ours = _predictions(
            candidate_model.scorer,
            candidate_model.decision_weights,
            classes,
            candidate_model.classes,
            x,
        )
        serving = dict(serving)
        if current is not None and serving["version"] != current["version"]:
            serving["role"] = f"the best of the last {INCUMBENTS} promoted models"
        target = metric.removesuffix("_f1")
        if metric.endswith("_f1") and target in classes:
            serving["evidence"] = paired_f1_difference(
                y, ours[0], serving["pred"], classes.index(target)
            )
        if serving["home"]:
            # Like with like only: a model of another population (the bootstrap,
            # another shop's) is a baseline to beat, not a bar on every class.
            guards = guard_checks(y, classes, ours, serving, realised)
    checks = decide(
        metric,
        candidate,
        baselines,
        serving,
        metrics.get("checks", {}),
        tolerance=tolerance,
        synthetic_over_real=synthetic_over_real,
        calibration=metrics.get("calibration"),
        guards=guards,
    )
    failed = [c for c in checks if not c["passed"]]
    bar = primary(serving["report"], metric)[1] if serving and serving.get("usable") else None
    if failed:
        reason = "; ".join(f"{c['check']}: {c['detail']}" for c in failed)
    else:
        beaten = ", ".join(f"{n} {v:.4f}" for n, v in baselines.items())
        against = "no serving model" if bar is None else f"serving {bar:.4f}"
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
    # What was compared, for the record: every incumbent's score on these rows.
    compared = [
        {
            "version": s["version"],
            "usable": s["usable"],
            "home": s.get("home"),
            metric: primary(s["report"], metric)[1] if s.get("usable") else None,
        }
        for s in scored
    ]
    verdict = Verdict(
        outcome="candidate" if failed else "promoted",
        reason=reason,
        version=candidate_dir.name,
        candidate_f1=candidate,
        current_f1=bar,
        baselines_f1=baselines,
        primary_metric=metric,
        rows=int(metrics.get("n", 0)),
        no_support=list(metrics.get("no_support", [])),
        serving=None
        if serving is None
        else {k: v for k, v in serving.items() if k not in ("report", "pred", "probs", "spend")},
        checks=checks,
        scores=scores,
    )
    record: dict[str, Any] = asdict(verdict)
    # Which value head the candidate serves (network, BG/NBD + Gamma-Gamma or the
    # blend), chosen on the same validation rows (model.training.stacking).
    record["value_head"] = metrics.get("value_source")
    record["incumbents"] = compared
    record["cutoffs_ms"] = [manifest["training"].get("validation_cutoff_ms")]
    (candidate_dir / "gate.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    manifest["gate"] = record
    (candidate_dir / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    render_report(candidate_dir, gate=record)
    return verdict
