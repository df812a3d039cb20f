"""Rule audiences: the file's checks, and NumPy evaluation against the CEL runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.features import FEATURE_NAMES
from model.segments import DEFAULT_SEGMENTS
from stream.worker.rules.audiences import (
    MAX_AUDIENCES,
    AudienceFile,
    AudiencesError,
    _cel_env,
    _Failures,
    parse,
    variables,
)
from stream.worker.rules.cel_numpy import compile_numpy
from stream.worker.state.record_codec import UserRecord, decode_record, encode_record

CLASSES = DEFAULT_SEGMENTS
KNOWN = variables(CLASSES)
DOUBLES = [v for v, t in KNOWN.items() if t == "double"]


def _num(draw: st.DrawFn, depth: int) -> str:
    choice = draw(st.integers(0, 5 if depth > 0 else 1))
    if choice == 0:
        return draw(st.sampled_from(DOUBLES))
    if choice == 1:
        return repr(draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 14.0, 100.0, 500.0, 1e6])))
    if choice == 2:
        op = draw(st.sampled_from(["+", "-", "*", "/"]))
        return f"({_num(draw, depth - 1)} {op} {_num(draw, depth - 1)})"
    if choice == 3:
        return f"-{_num(draw, depth - 1)}"
    if choice == 4:
        return f"({_bool(draw, depth - 1)} ? {_num(draw, depth - 1)} : {_num(draw, depth - 1)})"
    return f"({_num(draw, depth - 1)})"


def _bool(draw: st.DrawFn, depth: int) -> str:
    choice = draw(st.integers(0, 7 if depth > 0 else 2))
    if choice == 0:
        op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
        return f"{_num(draw, depth)} {op} {_num(draw, depth)}"
    if choice == 1:
        return f"segment == {draw(st.sampled_from(CLASSES))!r}"
    if choice == 2:
        return draw(st.sampled_from(["true", "false"]))
    if choice == 3:
        picked = draw(st.lists(st.sampled_from(CLASSES), min_size=0, max_size=3))
        return f"segment in [{', '.join(repr(c) for c in picked)}]"
    if choice == 4:
        return f"!({_bool(draw, depth - 1)})"
    if choice == 5:
        return f"({_bool(draw, depth - 1)} && {_bool(draw, depth - 1)})"
    if choice == 6:
        return f"({_bool(draw, depth - 1)} || {_bool(draw, depth - 1)})"
    return f"({_bool(draw, depth - 1)} ? {_bool(draw, depth - 1)} : {_bool(draw, depth - 1)})"


@st.composite
def conditions(draw: st.DrawFn) -> str:
    return _bool(draw, 3)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
#: What a trait is when the model cannot say (model.scorer.TRAITS): every variable
#: may be NaN here, so both paths are held to the same IEEE comparisons.
NAN = float("nan")


@st.composite
def rows(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], list[dict[str, object]]]:
    n = draw(st.integers(1, 6))
    values = {
        v: draw(
            st.lists(
                st.one_of(finite, st.sampled_from([0.0, 1.0, 14.0, NAN])), min_size=n, max_size=n
            )
        )
        for v in DOUBLES
    }
    segs = draw(st.lists(st.sampled_from(CLASSES), min_size=n, max_size=n))
    columns = {v: np.asarray(x, dtype=np.float64) for v, x in values.items()}
    columns["segment"] = np.asarray(segs, dtype=object)
    per_row = [{**{v: values[v][i] for v in DOUBLES}, "segment": segs[i]} for i in range(n)]
    return columns, per_row


ENV = _cel_env(CLASSES)


@settings(max_examples=300, deadline=None)
@given(conditions(), rows())
def test_numpy_evaluation_is_the_cel_runtimes(text: str, data) -> None:  # type: ignore[no-untyped-def]
    columns, per_row = data
    expression = ENV.compile(text)  # well typed by construction: the runtime accepts it
    # The generator stays inside what compiles to NumPy: an Unsupported here is
    # a failure, never a skip that would hide a missing case.
    vectorised = compile_numpy(text, KNOWN)
    got = vectorised(columns, len(per_row))
    expected = []
    for row in per_row:
        try:
            expected.append(expression.eval(data=row).value() is True)
        except Exception:  # an evaluation error matches no one
            expected.append(False)
    assert got.tolist() == expected, text


def test_what_numpy_does_not_take_is_left_to_the_runtime() -> None:
    text = "audiences:\n  - name: long\n    when: 'size(segment) > 7 && 7 / 2 == 3'\n"
    (audience,) = parse(text, "a.yaml", CLASSES).audiences
    assert not audience.vectorised
    raw = np.zeros((2, len(FEATURE_NAMES)))
    members = parse(text, "a.yaml", CLASSES).members(
        raw, ["high_value", "regular"], np.zeros((2, len(CLASSES)))
    )
    assert members[:, 0].tolist() == [True, False]  # 10 and 7 letters; 7 / 2 is 3 in CEL


def test_the_issue_example_selects_what_it_says() -> None:
    text = (
        "audiences:\n"
        "  - name: big_recent\n"
        "    when: 'spend_90d >= 500.0 && days_since_last_order <= 14.0'\n"
        "    description: spent 500 in 90 days, ordered in the last 14\n"
    )
    audiences = parse(text, "a.yaml", CLASSES)
    raw = np.zeros((3, len(FEATURE_NAMES)))
    raw[:, FEATURE_NAMES.index("spend_90d")] = [600.0, 499.99, 900.0]
    raw[:, FEATURE_NAMES.index("days_since_last_order")] = [2.0, 2.0, 14.5]
    members = audiences.members(raw, ["regular"] * 3, np.zeros((3, len(CLASSES))))
    assert members[:, 0].tolist() == [True, False, False]
    assert audiences.audiences[0].vectorised


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (
            "  - name: a\n    when: 'spend_90dd > 1.0'\n",
            ":2: audience 'a': condition line 1 column 1: undeclared reference to 'spend_90dd'",
        ),
        (
            "  - name: a\n    when: 'segment > 5.0'\n",
            "no matching overload for '_>_' applied to '(string, double)'",
        ),
        ("  - name: a\n    when: 'order_count >= 3'\n", "'(double, int)'"),
        ("  - name: a\n    when: 'spend_90d'\n", "the condition is a double, not a bool"),
        ("  - name: a\n    when: 'spend_90d >'\n", "Syntax error"),
        (
            "  - name: a\n    when: 'true'\n  - name: a\n    when: 'false'\n",
            ":4: audience 'a': the name is already used on line 2",
        ),
        ("  - name: Big\n    when: 'true'\n", ":2: audiences.0.name: String should match pattern"),
        ("  - name: a\n    whenn: 'true'\n", "audiences.0.when: Field required"),
        ("  - name: a\n    when: [1\n", "not valid YAML"),
    ],
)
def test_a_bad_file_says_where_and_why_in_one_line(body: str, expect: str) -> None:
    with pytest.raises(AudiencesError) as caught:
        parse("audiences:\n" + body, "aud.yaml", CLASSES)
    message = str(caught.value)
    assert expect in message and "\n" not in message and message.startswith("aud.yaml")


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    from stream.worker.rules.audiences import load

    with pytest.raises(AudiencesError, match="cannot read"):
        load(tmp_path / "missing.yaml", CLASSES)


@st.composite
def walks(draw: st.DrawFn) -> tuple[tuple[str, ...], list[tuple[int, int | None]], np.ndarray]:
    names = ("a", "b", "c")
    n = draw(st.integers(0, 8))
    members = np.array(
        draw(st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=n, max_size=n)),
        dtype=bool,
    ).reshape(n, 3)
    steps: list[tuple[int, int | None]] = [
        (i, draw(st.sampled_from([i, None])) if i == n - 1 else i) for i in range(n)
    ]
    # "z": an audience since removed from the file, left at the next scoring.
    current = tuple(sorted(draw(st.sets(st.sampled_from((*names, "z"))))))
    return current, steps, members


@given(walks())
def test_membership_walk_reports_every_change_once_in_order(case) -> None:  # type: ignore[no-untyped-def]
    from stream.worker.rules.audiences import membership_walk

    current, steps, members = case
    names = ("a", "b", "c")
    codes = [sum(1 << j for j in range(3) if row[j]) for row in members]
    final, changes = membership_walk(current, steps, names, codes)
    # Replaying the changes from the start gives the final membership...
    now = set(current)
    for audience, action, _ in changes:
        assert (action == "entered") == (audience not in now)  # never twice the same way
        now.symmetric_difference_update({audience})
    assert tuple(sorted(now)) == final
    # ...which is the last step's (none after an erasure), and times never go back.
    if steps:
        _, row = steps[-1]
        expected = set() if row is None else {names[k] for k in np.flatnonzero(members[row])}
        assert set(final) == expected
    else:
        assert final == current
    assert [at for _, _, at in changes] == sorted(at for _, _, at in changes)


def test_more_audiences_than_an_int64_has_bits() -> None:
    lines = ["audiences:"]
    for i in range(70):
        lines += [f"  - name: a{i}", f"    when: 'spend_90d >= {i}.0'"]
    audiences = parse("\n".join(lines) + "\n", "a.yaml", CLASSES)
    raw = np.zeros((2, len(FEATURE_NAMES)))
    raw[:, FEATURE_NAMES.index("spend_90d")] = [69.0, 5.0]
    codes = audiences.codes(raw, ["regular"] * 2, np.zeros((2, len(CLASSES))))
    assert codes == [2**70 - 1, 2**6 - 1]


def test_traits_are_variables_and_a_nan_trait_compares_false_in_both_paths() -> None:
    from model.scorer import TRAITS

    assert {t: KNOWN[t] for t in TRAITS} == dict.fromkeys(TRAITS, "double")
    text = (
        "audiences:\n"
        "  - name: big_spender\n"  # compiled to NumPy
        "    when: 'predicted_spend_90d >= 100.0 && p_purchase_90d > 0.5'\n"
        "  - name: small_spender\n"
        "    when: 'predicted_spend_90d < 100.0'\n"
        "  - name: soon\n"  # size() is a function: the CEL runtime, row by row
        "    when: 'size(segment) > 0 && days_to_next_order <= 7.0 && p_active_90d >= 0.5'\n"
        "  - name: unknown_spend\n"  # != is the one comparison NaN makes true (IEEE)
        "    when: 'predicted_spend_90d != predicted_spend_90d'\n"
    )
    audiences = parse(text, "a.yaml", CLASSES)
    assert [a.vectorised for a in audiences.audiences] == [True, True, False, True]
    traits = np.full((3, len(TRAITS)), NAN)
    col = {t: i for i, t in enumerate(TRAITS)}
    traits[0] = [0.9, 250.0, 0.95, 3.0]  # known, and in all three
    traits[1, col["p_purchase_90d"]] = 0.9  # spend and days unknown: in none of them
    traits[1, col["p_active_90d"]] = 0.95
    # row 2: nothing known
    raw = np.zeros((3, len(FEATURE_NAMES)))
    members = audiences.members(raw, ["regular"] * 3, np.zeros((3, len(CLASSES))), traits)
    assert members.tolist() == [
        [True, False, True, False],
        [False, False, False, True],
        [False, False, False, True],
    ]
    # Without traits (a caller that has none), every trait is NaN: the same answer as row 2.
    none = audiences.members(raw[:1], ["regular"], np.zeros((1, len(CLASSES))))
    assert none.tolist() == [[False, False, False, True]]


def test_a_condition_that_fails_at_run_time_is_counted_per_audience_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stream import metrics

    text = (
        "audiences:\n"
        "  - name: per_order_spend\n"
        "    when: 'int(spend_90d) / int(order_count) > 100'\n"  # 0 orders: divide by zero
        "  - name: too_big\n"
        "    when: 'int(spend_90d * 1e300) > 0'\n"  # out of int64 range
        "  - name: long_name\n"
        "    when: 'size(segment) > 7'\n"
    )
    parsed = parse(text, "a.yaml", CLASSES)
    raw = np.zeros((3, len(FEATURE_NAMES)))
    raw[0, FEATURE_NAMES.index("order_count")] = 1.0
    raw[:, FEATURE_NAMES.index("spend_90d")] = 500.0

    def errors(name: str) -> float:
        return metrics.AUDIENCE_ERRORS.labels(name, "error")._value.get()  # type: ignore[no-any-return]

    before = {n: errors(n) for n in parsed.names}
    caplog.set_level("WARNING", logger="stream.worker.rules.audiences")
    for _ in range(2):  # two batches within a minute
        members = parsed.members(raw, ["high_value"] * 3, np.zeros((3, len(CLASSES))))
        assert members.tolist() == [[True, False, True]] + [[False, False, True]] * 2
    assert {n: errors(n) - before[n] for n in parsed.names} == {
        "per_order_spend": 4,
        "too_big": 6,
        "long_name": 0,
    }
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2, logged  # once per audience
    assert "'per_order_spend'" in logged[0] and "divide by zero" in logged[0]
    assert "'too_big'" in logged[1]


def test_audience_failures_are_logged_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    failures = _Failures("some_audience", clock=lambda: now[0])
    caplog.set_level("WARNING", logger="stream.worker.rules.audiences")
    for t in (0.0, 10.0, 59.0, 60.0, 61.0, 125.0):
        now[0] = t
        failures.record("divide by zero")
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3  # at 0, 60 and 125 s
    assert "3 error" in logged[1]  # what happened since the last line: 10, 59 and 60 s


def _many(n: int) -> str:
    return "audiences:\n" + "".join(
        f"  - name: a{i}\n    when: 'order_count >= {i}.0'\n" for i in range(n)
    )


def test_at_most_255_audiences_are_taken_and_a_longer_file_is_refused_on_reload(
    tmp_path: Path,
) -> None:
    # A user's record counts their audiences in one byte: 255 is the most it can hold.
    path = tmp_path / "audiences.yaml"
    path.write_text(_many(MAX_AUDIENCES))
    held = AudienceFile(path, CLASSES)
    assert len(held.current.names) == MAX_AUDIENCES == 255
    rec = UserRecord(audiences=held.current.names, rev=1)
    assert decode_record(encode_record(rec), None).audiences == held.current.names
    with pytest.raises(AudiencesError, match="256 audiences, at most 255"):
        parse(_many(256), "a.yaml", CLASSES)
    path.write_text(_many(256))
    with pytest.raises(AudiencesError, match="at most 255"):
        held.reload(force=True)
    assert len(held.current.names) == 255  # the set in use stays
