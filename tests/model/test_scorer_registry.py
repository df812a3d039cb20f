from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.features import N_FEATURES, SCHEMA_HASH
from model.registry import (
    ModelError,
    bootstrap_dir,
    current_version,
    ensure_serving_model,
    load_current,
    load_version,
)
from model.scorer import Scorer


def test_numpy_forward_pass_matches_keras_on_10k_random_inputs() -> None:
    import keras

    import model.training.network  # noqa: F401  (registers the custom layers the saved model names)
    from model.cadence import extend

    boot = bootstrap_dir()
    served = load_version(boot)
    scorer = served.scorer
    assert scorer.towers is not None
    reference = keras.models.load_model(boot / "model.keras")
    rng = np.random.default_rng(42)
    # Spread inputs well beyond the training range: the two must agree everywhere.
    x = rng.normal(0.0, 3.0, size=(10_000, N_FEATURES)) * scale_of(scorer) + mean_of(scorer)
    x[:, :] = np.maximum(x, 0.0)  # counts, money and spans are never negative
    ours = scorer.heads(x)
    model_input = extend(x, scorer.towers.cadence).astype(np.float32)
    theirs = np.asarray(reference.predict(model_input, verbose=0, batch_size=2048))
    assert ours.shape == (10_000, 4) and theirs.shape == (10_000, 5)
    np.testing.assert_allclose(ours, theirs[:, :4], atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(theirs[:, 4], scorer.towers.sigma, rtol=1e-6)
    probs = scorer.predict(x)
    assert probs.shape == (10_000, len(served.classes))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)


def mean_of(scorer: Scorer) -> np.ndarray:
    """The standardisation of the feature row (the model input also has cadence columns)."""
    return scorer.mean[:N_FEATURES]


def scale_of(scorer: Scorer) -> np.ndarray:
    return scorer.scale[:N_FEATURES]


_ROWS = np.random.default_rng(7).normal(0.0, 3.0, size=(12_000, N_FEATURES))


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 11_999),
    size=st.one_of(st.integers(1, 40), st.integers(41, 12_000)),
    shuffle=st.booleans(),
)
def test_a_rows_scores_do_not_depend_on_the_rows_scored_with_it(
    start: int, size: int, shuffle: bool
) -> None:
    """Bit for bit: a replay that cuts the stream into other batches publishes the
    same probabilities and explanations under the same version. (A plain matrix
    product fails this: BLAS rounds one row, few rows and many rows differently.)"""
    scorer = load_version(bootstrap_dir()).scorer
    x = np.maximum(_ROWS * scale_of(scorer) + mean_of(scorer), 0.0)
    whole = scorer.score(x)
    rows = np.arange(start, min(start + size, len(x)))
    if shuffle:
        rows = np.random.default_rng(start).permutation(rows)
    part = scorer.score(x[rows])
    assert np.array_equal(part.probabilities, whole.probabilities[rows])
    assert np.array_equal(part.traits, whole.traits[rows], equal_nan=True)


def test_bootstrap_model_is_for_this_feature_schema() -> None:
    manifest = orjson.loads((bootstrap_dir() / "manifest.json").read_bytes())
    assert manifest["schema_hash"] == SCHEMA_HASH
    assert manifest["classes"] == ["high_value", "regular", "potential", "at_risk"]


def test_empty_model_dir_is_seeded_with_the_bootstrap_model(tmp_path: Path) -> None:
    version = ensure_serving_model(tmp_path / "models")
    assert current_version(tmp_path / "models") == version
    assert load_current(tmp_path / "models").version == version


@pytest.mark.parametrize("name", ["high value", "p -q", "", "x" * 65, "é"])
def test_a_class_name_that_cannot_be_a_topic_or_key_part_is_refused(
    tmp_path: Path, name: str
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bootstrap_dir(), bad)
    manifest = orjson.loads((bad / "manifest.json").read_bytes())
    manifest["classes"] = [name, *manifest["classes"][1:]]
    (bad / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(ModelError, match="class names"):
        load_version(bad)


def test_model_with_another_feature_schema_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bootstrap_dir(), bad)
    manifest = orjson.loads((bad / "manifest.json").read_bytes())
    manifest["schema_hash"] = "0" * 16
    (bad / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(ModelError, match="feature schema"):
        load_version(bad)


def _old_model(model_dir: Path, version: str) -> None:
    """A copy of the shipped model under ``version``, for another feature schema."""
    shutil.copytree(bootstrap_dir(), model_dir / version)
    manifest = orjson.loads((model_dir / version / "manifest.json").read_bytes())
    manifest.update(version=version, schema_hash="0" * 16)
    (model_dir / version / "manifest.json").write_bytes(orjson.dumps(manifest))
    (model_dir / "current").write_text(version + "\n")


def test_an_upgrade_moves_a_registry_off_an_old_shipped_bootstrap(tmp_path: Path) -> None:
    """A laptop that ran the demo before an upgrade still serves bootstrap-v2, which
    the new features cannot feed: it moves on to the shipped bootstrap, not a crash."""
    models = tmp_path / "models"
    _old_model(models, "bootstrap-v0")
    shipped = orjson.loads((bootstrap_dir() / "manifest.json").read_bytes())["version"]
    assert ensure_serving_model(models) == shipped
    assert load_current(models).version == shipped


def test_a_model_someone_trained_is_never_replaced_behind_their_back(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _old_model(models, "20240101T000000Z-mine")
    assert ensure_serving_model(models) == "20240101T000000Z-mine"
    with pytest.raises(ModelError, match="retrain it"):
        load_current(models)
