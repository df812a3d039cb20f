"""The promotion gate: may a newly trained model replace the serving one?

It measures what segments are for, on the data the model will serve:

* **One primary metric** (:data:`model.training.evaluate.PRIMARY_METRIC`, high_value
  F1; the module docstring of :mod:`model.training.evaluate` says why), computed over
  classes with support only. The candidate, the incumbents and every baseline
  are scored with it on the candidate's own rows (:mod:`model.training.gate.rows`):
  users at the validation cutoff V and at the earlier closed cutoffs of
  :func:`model.training.dataset.gate_cutoffs`.
* **Evidence, not points:** the candidate is compared with each model by the
  paired bootstrap interval of the difference, a user's rows resampled
  together (:mod:`model.training.gate.evidence`), at level
  :data:`model.training.gate.evidence.LEVEL`.
* **Baselines** (:mod:`model.training.gate.guards`): the candidate must not trail
  the simple rules (RFM, "previous segment") beyond the tolerance nor be shown
  worse than them: otherwise the network is not earning its keep. The
  classic CLV model (BG/NBD + Gamma-Gamma) is the field's reference, and the
  floor: the candidate must trail it by at most
  :data:`model.training.gate.guards.REFERENCE_MARGIN`.
* **The incumbent** is the best of the last :data:`INCUMBENTS` promoted
  models on these rows, not only the serving one, so a chain of small losses
  cannot add up. It has a home advantage only when it was trained on the
  same population: real events, the same feature schema and classes, and a
  training distribution within PSI 0.25 of the candidate's rows on every
  feature. Then the low end of the interval of (candidate - incumbent) must
  be above ``-tolerance`` (churning models for noise helps nobody), and every
  guard must hold. Otherwise (the bootstrap, a synthetic model, another
  shop's model) it is scored like any baseline and must be beaten. One that
  cannot be scored at all refuses the candidate, unless forced.
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
from model.training.gate import rows as gate_rows
from model.training.gate.evidence import paired_f1_difference
from model.training.gate.guards import baseline_checks, guard_checks, per_cutoff
from model.training.gate.rows import GateRows

log = logging.getLogger(__name__)

#: The incumbent is the best of this many last promoted models (the serving one included).
INCUMBENTS = 5


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
    model_dir: Path, version: str, manifest: dict[str, Any], rows: GateRows
) -> dict[str, Any]:
    """A registry version on the candidate's gate rows, and whether it is on home ground.

    ``report`` is on the V rows (as the candidate's own metrics are),
    ``report_all`` on every closed cutoff's rows, which choose the bar."""
    try:
        served = load_version(model_dir / version)
        classes = list(manifest["classes"])
        pred, probs, spend = _predictions(
            served.scorer, served.decision_weights, classes, served.classes, rows.x
        )
    except Exception as exc:  # reported: the caller decides what an unusable model means
        log.warning("model %s cannot be scored on the candidate's rows (%s)", version, exc)
        return {"version": version, "usable": False, "home": False, "why": str(exc)}
    v = rows.validation
    report = classification_report(rows.y[v], pred[v], classes)
    kind = served.manifest.get("training", {}).get("source_kind", "unknown")
    # Like with like: the model's own validation rows (users at a cutoff)
    # against the candidate's. The drift reference is shaped like the
    # worker's inputs (users at an event), so it would not compare.
    drift = None
    served_rows = model_dir / version / gate_rows.FILE
    if served_rows.exists():
        with np.load(served_rows) as own:
            drift = max_psi(reference(own["x"]), rows.x[v], list(manifest["features"]))
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
        "report_all": classification_report(rows.y, pred, classes),
        "pred": pred,
        "probs": probs,
        "spend": spend,
    }


def incumbents(
    model_dir: Path, candidate_dir: Path, manifest: dict[str, Any], rows: GateRows
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
    scored = [score_version(model_dir, v, manifest, rows) for v in versions]
    serving = scored[0] if scored and scored[0]["version"] == serving_version else None
    return serving, scored


def best_incumbent(scored: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The best usable one by ``metric`` on the candidate's rows at every closed cutoff:
    the bar a candidate must clear, so that a chain of small losses cannot add up
    (no ratchet)."""
    usable = [s for s in scored if s.get("usable")]
    if not usable:
        return None
    return max(usable, key=lambda s: primary(s.get("report_all", s["report"]), metric)[1])


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
    baseline_evidence: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Pure rule: one entry per check, each with ``passed`` and a sentence.

    ``serving`` is the incumbent: the best of the last promoted models on the
    candidate's rows. With ``evidence`` (the paired interval of the candidate
    minus it, over every closed cutoff), home ground asks the interval's low
    end to be above ``-tolerance``, not the point: a noise-sized loss is not
    promoted. ``baseline_evidence``: the paired interval against each baseline
    (:func:`model.training.gate.guards.baseline_checks`).
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
    checks += baseline_checks(
        metric, candidate, baselines, baseline_evidence or {}, tolerance=tolerance
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
                f"must have the interval's low end above -{tolerance} against {role} "
                f"(home ground: {serving['why']})"
            )
        elif serving["home"]:
            ok = candidate >= value - tolerance
            rule = f"must be within {tolerance} of {role} (home ground: {serving['why']})"
        else:
            ok = candidate > value
            rule = f"must beat {role}, scored as a baseline ({serving['why']})"
        checks.append(
            {
                "check": f"serving {serving['version']}",
                "passed": ok,
                "detail": f"{metric} {candidate:.4f} vs {value:.4f}{interval}: {rule}",
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
    # The development suite (what models were built against) and the release
    # suite (written once, never changed to make a model pass) are checked apart.
    for suite in ("development", "release"):
        misplaced = [
            f"{a['name']} -> {a['got']} (expected {'/'.join(a['expected'])})"
            for a in behaviour.get("archetypes", [])
            if not a["passed"] and a.get("suite", "development") == suite
        ] + [
            p["name"]
            for p in behaviour.get("pairs", [])
            if not p["passed"] and p.get("suite", "development") == suite
        ]
        judged = [
            a
            for a in behaviour.get("archetypes", [])
            if a.get("suite", "development") == suite and a.get("applicable", True)
        ]
        if suite == "release" and not judged and not misplaced:
            continue  # a record from before the release suite existed
        checks.append(
            {
                "check": "archetypes" if suite == "development" else "archetypes (release)",
                "passed": not misplaced,
                "detail": f"every {suite} archetype where the label definition puts it "
                f"({len(judged)} judged)"
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
    rows = gate_rows.load(
        candidate_dir / gate_rows.FILE, manifest["training"].get("validation_cutoff_ms")
    )
    classes = list(manifest["classes"])
    current, scored = incumbents(model_dir, candidate_dir, manifest, rows)
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
    target = metric.removesuffix("_f1")
    k = classes.index(target) if metric.endswith("_f1") and target in classes else None
    candidate_model = load_version(candidate_dir)
    ours = _predictions(
        candidate_model.scorer,
        candidate_model.decision_weights,
        classes,
        candidate_model.classes,
        rows.x,
    )
    # Row by row against each baseline, on the V rows their decisions were kept for.
    v = rows.validation
    baseline_evidence = {
        name: paired_f1_difference(rows.y[v], ours[0][v], pred, k, groups=rows.groups[v])
        for name, pred in rows.baselines.items()
        if k is not None and name in baselines and len(pred) == int(v.sum())
    }
    if current is None or current.get("usable"):
        serving = best
    if serving is not None and serving.get("usable"):
        serving = dict(serving)
        if current is not None and serving["version"] != current["version"]:
            serving["role"] = f"the best of the last {INCUMBENTS} promoted models"
        if k is not None:
            # Over every closed cutoff's rows, a user's rows resampled together.
            serving["evidence"] = paired_f1_difference(
                rows.y, ours[0], serving["pred"], k, groups=rows.groups
            )
            serving["evidence"]["cutoffs"] = per_cutoff(
                rows.y, ours[0], serving["pred"], k, rows.cutoffs
            )
        if serving["home"]:
            # Like with like only: a model of another population (the bootstrap,
            # another shop's) is a baseline to beat, not a bar on every class.
            guards = guard_checks(
                y=rows.y,
                classes=classes,
                candidate=ours,
                incumbent=serving,
                realised=rows.spend,
                groups=rows.groups,
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
        guards=guards,
        baseline_evidence=baseline_evidence,
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
        else {
            key: value
            for key, value in serving.items()
            if key not in ("report", "report_all", "pred", "probs", "spend")
        },
        checks=checks,
        scores=scores,
    )
    record: dict[str, Any] = asdict(verdict)
    # Which value head the candidate serves (network, BG/NBD + Gamma-Gamma or the
    # blend), chosen on the same validation rows (model.training.stacking).
    record["value_head"] = metrics.get("value_source")
    record["incumbents"] = compared
    record["cutoffs_ms"] = rows.cutoff_list
    record["gate_rows"] = {"rows": len(rows.y), "users": len(np.unique(rows.groups))}
    (candidate_dir / "gate.json").write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    manifest["gate"] = record
    (candidate_dir / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    render_report(candidate_dir, gate=record)
    return verdict
