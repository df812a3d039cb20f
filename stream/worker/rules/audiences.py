"""Rule audiences: named CEL conditions over a user's features, beside the model's segments.

A file (``SEGMENTER_AUDIENCES_PATH``) names the audiences::

    audiences:
      - name: big_recent
        when: 'spend_90d >= 500.0 && days_since_last_order <= 14.0'
        description: optional text

Conditions are CEL, the Common Expression Language. Their variables are the
model's raw feature names (:data:`model.features.FEATURE_NAMES`, doubles, as
``segmenter user --json`` shows them under ``model.``), ``segment`` (a string),
``p_<segment>`` (the model's probabilities, doubles) and the predictive traits
(:data:`model.scorer.TRAITS`, doubles: ``p_purchase_90d``,
``predicted_spend_90d``, ``p_active_90d``, ``days_to_next_order``).

A trait the model cannot say is NaN, and IEEE comparisons make every ordered
comparison and ``==`` with NaN false (``!=`` true), in the CEL runtime and in
NumPy alike: ``predicted_spend_90d >= 100.0`` never selects a user whose spend
the model cannot predict (``tests/stream/test_audiences.py``).

Each condition is **type-checked by Google's CEL runtime** (``cel-expr-python``)
when the file is loaded, so an unknown variable, a type error (``segment > 5.0``,
or ``order_count >= 3``, an int against a double) or a condition that is not a
bool is refused with the audience's name and the line and column.

**Evaluation is vectorised**: the conditions that use CEL's operators only
(arithmetic, comparisons, ``&&``, ``||``, ``!``, ``?:``, ``in [...]``, literals)
are compiled to NumPy and evaluated over every scoring of a batch at once; any
other condition (macros, functions) is evaluated row by row by the CEL runtime.
A property test checks that both give what the CEL runtime gives.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.features import FEATURE_NAMES
from model.scorer import TRAITS
from stream import metrics
from stream.core.events import DAY_MS
from stream.worker.rules.cel_numpy import Unsupported, compile_numpy, thresholds
from stream.worker.rules.yaml_files import line_of, load_yaml

log = logging.getLogger(__name__)

#: Audience names: they appear in topics' messages, metric labels and URLs.
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
#: Audiences one file may name: a user's record counts the ones they are in in
#: one byte (stream.worker.state.record_codec), so more could not be stored.
MAX_AUDIENCES = 255


class AudienceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN)
    when: str = Field(min_length=1, max_length=4000)
    description: str | None = Field(None, max_length=1000)


class AudiencesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    audiences: list[AudienceSpec] = Field(default_factory=list, max_length=MAX_AUDIENCES)


class AudiencesError(ValueError):
    """A file that cannot serve, with the place and the reason, on one line."""


Columns = dict[str, Any]  # variable -> array over rows (or a scalar)


@dataclass(frozen=True)
class Audience:
    name: str
    when: str
    description: str | None
    #: Evaluates the condition over all rows at once: a bool array.
    evaluate: Callable[[Mapping[str, Any], int], np.ndarray]
    vectorised: bool


#: Features that grow with time alone, and the record time each is measured from.
CLOCKS = {
    "days_since_last_activity": "last_seen",
    "days_since_last_order": "last_order_at",
    "tenure_days": "first_seen",
}


@dataclass(frozen=True)
class Audiences:
    audiences: tuple[Audience, ...]
    source: str
    classes: tuple[str, ...]
    #: Per clock feature, the offsets (ms after its anchor time) at which some
    #: condition compares it with a constant: a user is re-evaluated there, and
    #: just after, so that time alone moves them in or out when it should.
    #: Other conditions (decayed spend, say) are re-evaluated at the regular
    #: inactivity steps (SEGMENTER_REEVALUATE_DAYS).
    clock_offsets: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.audiences)

    @functools.cached_property
    def clocks(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """:attr:`clock_offsets` by the record field each clock runs from."""
        return tuple((CLOCKS[f], offsets) for f, offsets in self.clock_offsets.items())

    @functools.cached_property
    def bits(self) -> dict[str, int]:
        """Each audience's bit in :meth:`codes`."""
        return {name: 1 << j for j, name in enumerate(self.names)}

    def codes(
        self,
        raw: np.ndarray,
        segments: Sequence[str],
        probs: np.ndarray,
        traits: np.ndarray | None = None,
    ) -> list[int]:
        """Each row's memberships as an int, bit j for audience j (see :meth:`members`)."""
        members = self.members(raw, segments, probs, traits)
        k = members.shape[1]
        if not k:
            return [0] * len(members)
        if k <= 62:  # fits an int64: one matrix product for the batch
            weights = np.left_shift(1, np.arange(k, dtype=np.int64))
            codes: list[int] = (members.astype(np.int64) @ weights).tolist()
            return codes
        packed = np.packbits(members, axis=1, bitorder="little")
        return [int.from_bytes(row.tobytes(), "little") for row in packed]

    def members(
        self,
        raw: np.ndarray,
        segments: Sequence[str],
        probs: np.ndarray,
        traits: np.ndarray | None = None,
    ) -> np.ndarray:
        """Membership, rows x audiences: ``raw`` are raw feature rows (before log1p),
        ``segments`` each row's segment, ``probs`` the model's probabilities,
        ``traits`` its predictive traits (:data:`TRAITS` columns; None = all NaN)."""
        n = len(raw)
        out = np.zeros((n, len(self.audiences)), dtype=bool)
        if not n or not self.audiences:
            return out
        columns: Columns = {name: raw[:, i] for i, name in enumerate(FEATURE_NAMES)}
        columns["segment"] = np.asarray(segments, dtype=object)
        for j, cls in enumerate(self.classes):
            columns[f"p_{cls}"] = probs[:, j]
        if traits is None:
            traits = np.full((n, len(TRAITS)), np.nan)
        for j, name in enumerate(TRAITS):
            columns[name] = traits[:, j]
        for k, audience in enumerate(self.audiences):
            out[:, k] = audience.evaluate(columns, n)
        return out


def membership_walk(
    current: Sequence[str],
    steps: Sequence[tuple[int, int | None]],
    names: Sequence[str],
    codes: Sequence[int],
    bits: Mapping[str, int] | None = None,
) -> tuple[tuple[str, ...], list[tuple[str, str, int]]]:
    """A user's audiences through their scorings, in order.

    ``codes`` holds each row's memberships as bits (bit j: ``names[j]``, see
    :meth:`Audiences.codes`); ``steps`` are (event time, row), or (time, None)
    for an erasure, which leaves every audience. Returns the audiences after
    the last step and the changes, as (audience, "entered" | "exited", event
    time). An audience no longer in the file is left at the next scoring.
    Most scorings change nothing, and cost one comparison of two ints.
    """
    bit = bits if bits is not None else {name: 1 << j for j, name in enumerate(names)}
    now = 0
    gone = sorted(a for a in current if a not in bit)  # removed from the file
    for a in current:
        now |= bit.get(a, 0)
    changes: list[tuple[str, str, int]] = []
    for at, row in steps:
        new = 0 if row is None else codes[row]
        if new == now and not gone:
            continue
        changes += [(a, "exited", at) for a in gone]
        gone = []
        left, came = now & ~new, new & ~now
        changes += [(names[j], "exited", at) for j in range(len(names)) if left >> j & 1]
        changes += [(names[j], "entered", at) for j in range(len(names)) if came >> j & 1]
        now = new
    final = [*gone, *(names[j] for j in range(len(names)) if now >> j & 1)]
    return tuple(sorted(final)), changes


def variables(classes: Sequence[str]) -> dict[str, str]:
    """The variables a condition may use, with their CEL types."""
    out = {name: "double" for name in FEATURE_NAMES}
    out["segment"] = "string"
    out.update({f"p_{c}": "double" for c in classes})
    if clash := sorted(set(TRAITS) & set(out)):
        # A class named e.g. "purchase_90d" would make p_purchase_90d mean two things.
        raise AudiencesError(f"the model's classes make {clash} both a probability and a trait")
    out.update(dict.fromkeys(TRAITS, "double"))
    return out


def _cel_env(classes: Sequence[str]) -> Any:
    from cel_expr_python import cel

    kinds = {"double": cel.Type.DOUBLE, "string": cel.Type.STRING}
    return cel.NewEnv(variables={k: kinds[v] for k, v in variables(classes).items()})


_CEL_WHERE = re.compile(r"<input>:(\d+):(\d+): (.*)")


def _cel_problem(exc: Exception) -> str:
    """CEL's first error, as 'line L column C: what'."""
    text = str(exc)
    found = _CEL_WHERE.search(text)
    if not found:
        return " ".join(text.split())[:300]
    line, col, what = found.groups()
    what = what.split(" [INVALID_ARGUMENT]")[0].split("\n")[0].strip()
    return f"condition line {line} column {col}: {what}"


class _Failures:
    """Counts one audience's failed evaluations, and says so once a minute at most:
    a failure means "not a member", which must not pass unnoticed."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._logged_at: float | None = None
        self._since: Counter[str] = Counter()

    def record(self, problem: object) -> None:
        text = str(problem)
        kind = "budget" if re.search(r"\b(cost|budget|limit)\b", text, re.I) else "error"
        metrics.AUDIENCE_ERRORS.labels(self.name, kind).inc()
        self._since[kind] += 1
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= 60.0:
            self._logged_at = now
            counts = ", ".join(f"{n} {k}" for k, n in sorted(self._since.items()))
            self._since.clear()
            log.warning(
                "audience %r: condition failed on %s evaluation(s) (last: %s): those users "
                "count as not members; see segmenter_audience_errors_total",
                self.name,
                counts,
                " ".join(text.split())[:200],
            )


def _row_by_row(
    expression: Any, used: list[str], failures: _Failures
) -> Callable[[Mapping[str, Any], int], np.ndarray]:
    """The CEL runtime, one row at a time: for conditions NumPy cannot take."""

    from cel_expr_python import cel

    error = cel.Type.ERROR

    def evaluate(columns: Mapping[str, Any], n: int) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        cols = [(v, columns[v]) for v in used]
        for i in range(n):
            data = {v: (c[i].item() if hasattr(c[i], "item") else c[i]) for v, c in cols}
            # A runtime error (1 / 0 on ints, a cost limit) matches no one; the
            # runtime returns most as an error value, and may raise others.
            try:
                result = expression.eval(data=data)
            except Exception as exc:
                failures.record(exc)
                continue
            if result.type() == error:
                failures.record(result.value())
            else:
                out[i] = result.value() is True
        return out

    return evaluate


def parse(text: str, source: str, classes: Sequence[str]) -> Audiences:
    """Check an audiences file; raise :class:`AudiencesError` on the first problem."""
    raw = load_yaml(text, source, AudiencesError)
    listed = raw.get("audiences") if isinstance(raw, dict) else None
    if isinstance(listed, list) and len(listed) > MAX_AUDIENCES:
        raise AudiencesError(
            f"{source}: {len(listed)} audiences, at most {MAX_AUDIENCES} are allowed "
            "(a user's record counts theirs in one byte): remove some"
        )
    try:
        doc = AudiencesFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc)
        raise AudiencesError(
            f"{source}:{line_of(text, loc) or '?'}: {path}: {err['msg']}"
        ) from None
    env = _cel_env(classes)
    known = variables(classes)
    seen: dict[str, int] = {}
    out = []
    for i, spec in enumerate(doc.audiences):
        line = line_of(text, ("audiences", i)) or "?"
        where = f"{source}:{line}: audience {spec.name!r}"
        if spec.name in seen:
            raise AudiencesError(f"{where}: the name is already used on line {seen[spec.name]}")
        seen[spec.name] = line if isinstance(line, int) else 0
        try:
            expression = env.compile(spec.when)
        except Exception as exc:
            raise AudiencesError(f"{where}: {_cel_problem(exc)}") from None
        kind = expression.return_type().name().lower()
        if kind != "bool":
            raise AudiencesError(f"{where}: the condition is a {kind}, not a bool")
        used = [v for v in known if re.search(rf"\b{re.escape(v)}\b", spec.when)]
        try:
            evaluate, vectorised = compile_numpy(spec.when, known), True
        except Unsupported:
            evaluate, vectorised = _row_by_row(expression, used, _Failures(spec.name)), False
        out.append(Audience(spec.name, spec.when, spec.description, evaluate, vectorised))
    clocks: dict[str, set[int]] = {}
    for spec in doc.audiences:
        for feature, op, days in thresholds(spec.when, set(CLOCKS)):
            if 0 <= days <= 36_500:
                # The clock grows: '< K' and '>= K' flip when it reaches K days;
                # '<= K' and '> K' one millisecond later; '==' and '!=' at both.
                at = round(days * DAY_MS)
                flips = {"<": (at,), ">=": (at,), "<=": (at + 1,), ">": (at + 1,)}
                clocks.setdefault(feature, set()).update(flips.get(op, (at, at + 1)))
    return Audiences(
        tuple(out),
        source,
        tuple(classes),
        {k: tuple(sorted(v)) for k, v in clocks.items()},
    )


def load(path: Path, classes: Sequence[str]) -> Audiences:
    try:
        text = path.read_text()
    except OSError as exc:
        raise AudiencesError(f"{path}: cannot read the audiences file: {exc}") from None
    return parse(text, str(path), classes)


class AudienceFile:
    """The file in use, reloaded when it changes on disk (or when asked, on SIGHUP).

    A file that no longer checks is not taken: the audiences in use stay, and
    :meth:`reload` raises :class:`AudiencesError` saying why.
    """

    def __init__(self, path: Path, classes: Sequence[str]) -> None:
        self.path, self.classes = path, tuple(classes)
        self._stamp = self._stat()
        self.current = load(path, self.classes)

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    def reload(self, force: bool = False) -> Audiences | None:
        """The new audiences if the file changed (or ``force``), else None."""
        stamp = self._stat()
        if stamp == self._stamp and not force:
            return None
        self._stamp = stamp  # a bad file is reported once, not on every check
        self.current = load(self.path, self.classes)
        return self.current
