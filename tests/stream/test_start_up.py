"""Wrong settings and unusable models are refused up front, with what to fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from model.registry import bootstrap_dir, ensure_serving_model, load_current, set_current
from stream.settings import SettingsError, load_settings
from stream.worker.model_holder import ModelHolder


@pytest.mark.parametrize("days", ["[14, Infinity]", "[NaN]", "[30, 14]", "[0]", "[-3]"])
def test_reevaluate_days_must_be_increasing_finite_positive(
    monkeypatch: pytest.MonkeyPatch, days: str
) -> None:
    monkeypatch.setenv("SEGMENTER_REEVALUATE_DAYS", days)
    with pytest.raises(SettingsError, match="SEGMENTER_REEVALUATE_DAYS"):
        load_settings()


@pytest.mark.parametrize(
    "template", ["segments.{segment}.{region}", "segments.{segment}.{0}", "bad topic {segment}"]
)
def test_segment_topic_template_allows_only_the_segment_placeholder(template: str) -> None:
    with pytest.raises(SettingsError, match="SEGMENTER_SEGMENT_TOPIC_TEMPLATE"):
        load_settings(segment_topic_template=template)


def test_a_model_with_other_classes_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    ensure_serving_model(tmp_path)
    holder = ModelHolder(load_current(tmp_path))
    served = holder.current.version
    other = tmp_path / "renamed-classes"
    shutil.copytree(bootstrap_dir(), other)
    manifest = orjson.loads((other / "manifest.json").read_bytes())
    manifest["version"] = other.name
    manifest["classes"] = ["vip", *manifest["classes"][1:]]
    (other / "manifest.json").write_bytes(orjson.dumps(manifest))
    set_current(tmp_path, other.name)

    assert holder.reload_if_promoted(tmp_path) is False
    assert holder.current.version == served
