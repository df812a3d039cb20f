"""A model is scored on a fixed probe batch when it loads: NaN or wrong inner
shapes are refused at load (model/probe.py), whatever weight goes bad."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.registry import WEIGHTS, ModelError, bootstrap_dir, load_version


def _variant(tmp: Path, name: str, change: dict[str, np.ndarray]) -> Path:
    target = tmp / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(bootstrap_dir(), target)
    with np.load(target / WEIGHTS) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(change)
    np.savez(target / WEIGHTS, **arrays)  # type: ignore[arg-type]
    return target


def _weights() -> dict[str, np.ndarray]:
    with np.load(bootstrap_dir() / WEIGHTS) as data:
        return {k: data[k] for k in data.files}


LAYERS = ["kernel_0", "bias_0", "kernel_1", "bias_1", "mean", "scale"]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(LAYERS), at=st.integers(0, 10_000), bad=st.sampled_from([np.nan]))
def test_a_nan_anywhere_in_the_network_is_refused_at_load(
    tmp_path: Path, name: str, at: int, bad: float
) -> None:
    weights = _weights()[name].astype(np.float64).copy()
    weights.flat[at % weights.size] = bad
    with pytest.raises(ModelError, match="not finite"):  # probabilities, or a whole head
        load_version(_variant(tmp_path, "nan", {name: weights}))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scale=st.floats(0.5, 2.0), name=st.sampled_from(["kernel_0", "kernel_1"]))
def test_finite_weights_of_the_right_shapes_load(tmp_path: Path, scale: float, name: str) -> None:
    weights = _weights()[name] * scale
    assert load_version(_variant(tmp_path, "ok", {name: weights})).classes


def test_inner_shapes_that_do_not_fit_are_refused_at_load(tmp_path: Path) -> None:
    """Only the output width is read from the weights' shapes: a hidden layer one
    unit short loads, and would fail every batch it scores."""
    kernel = _weights()["kernel_1"][:-1]  # one hidden unit fewer than layer 0 gives
    with pytest.raises(ModelError, match="probe batch"):
        load_version(_variant(tmp_path, "short", {"kernel_1": kernel}))
