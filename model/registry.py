"""The model registry on disk: ``<model_dir>/<version>/`` plus a ``current`` pointer.

Each version directory holds ``manifest.json``, ``weights.npz`` (what the
worker serves) and ``model.keras`` (what a data scientist reloads). Writes go
to a temporary directory first and are renamed into place, so a reader never
sees half a model.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from model.features import FEATURE_NAMES, SCHEMA_HASH
from model.probe import probe_problem
from model.scorer import Scorer

log = logging.getLogger(__name__)

CURRENT = "current"
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
KERAS = "model.keras"


class ModelError(RuntimeError):
    """A model that cannot be served, with the reason in words an operator can act on."""


@dataclass(frozen=True)
class LoadedModel:
    version: str
    manifest: dict[str, Any]
    scorer: Scorer

    @property
    def classes(self) -> tuple[str, ...]:
        return self.scorer.classes

    @property
    def decision_weights(self) -> dict[str, float] | None:
        """Per-class decision weights (model.segments.decision_scores), or None."""
        weights = (self.manifest.get("decision") or {}).get("weights")
        return {str(k): float(v) for k, v in weights.items()} if weights else None


#: What a segment class may be called (a Kafka topic name's characters).
CLASS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def read_manifest(version_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = orjson.loads((version_dir / MANIFEST).read_bytes())
    except FileNotFoundError as exc:
        raise ModelError(f"{version_dir}: no {MANIFEST}") from exc
    return data


def load_version(version_dir: Path) -> LoadedModel:
    manifest = read_manifest(version_dir)
    if manifest.get("schema_hash") != SCHEMA_HASH:
        raise ModelError(
            f"model {version_dir.name} was trained on feature schema "
            f"{manifest.get('schema_hash')!r}, this code computes {SCHEMA_HASH!r}; "
            "retrain it with this version of the code"
        )
    if tuple(manifest.get("features", ())) != FEATURE_NAMES:
        raise ModelError(f"model {version_dir.name}: feature names differ from this code's")
    classes = tuple(manifest["classes"])
    if len(str(manifest["version"]).encode()) > 255:
        # The worker stores it per user, with a one-byte length.
        raise ModelError(f"model {version_dir.name}: version over 255 bytes")
    if bad := [c for c in classes if not CLASS_NAME.fullmatch(c)]:
        # Class names become topic names (segments.<class>), Redis key parts and
        # words of the commit script's moves: a space would split one in two.
        raise ModelError(
            f"model {version_dir.name}: class names {bad} are not 1-64 of A-Z a-z 0-9 _ . -"
        )
    scorer = Scorer.load(version_dir / WEIGHTS, classes)
    if problem := probe_problem(scorer):
        raise ModelError(f"model {version_dir.name}: {problem}")
    return LoadedModel(version=manifest["version"], manifest=manifest, scorer=scorer)


def current_version(model_dir: Path) -> str | None:
    pointer = model_dir / CURRENT
    if not pointer.exists():
        return None
    return pointer.read_text().strip() or None


def set_current(model_dir: Path, version: str) -> None:
    if not (model_dir / version / MANIFEST).exists():
        raise ModelError(f"no model version {version!r} in {model_dir}")
    # Atomic replace: a worker reading the pointer sees the old or the new name.
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".current.")
    with os.fdopen(fd, "w") as fh:
        fh.write(version + "\n")
    os.replace(tmp, model_dir / CURRENT)


def list_versions(model_dir: Path) -> list[str]:
    if not model_dir.exists():
        return []
    return sorted(p.name for p in model_dir.iterdir() if (p / MANIFEST).exists())


def publish_version(model_dir: Path, staging: Path, version: str) -> Path:
    """Move a fully written staging directory into the registry as ``version``."""
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / version
    if target.exists():
        raise ModelError(f"model version {version!r} already exists in {model_dir}")
    os.replace(staging, target)
    return target


def bootstrap_dir() -> Path:
    """The small model shipped inside the package, so a fresh checkout can serve."""
    return Path(str(resources.files("model").joinpath("bootstrap")))


def ensure_serving_model(model_dir: Path) -> str:
    """Make sure ``model_dir`` has a current model, seeding it with the bootstrap one.

    A registry still serving an older *shipped* bootstrap model that this code
    can no longer serve (another feature schema) is moved on to the shipped
    one, with a warning: an upgrade must not leave a fresh install unable to
    start. A model someone trained is never replaced: its load error says to
    retrain it.
    """
    version = current_version(model_dir)
    if version is not None and not _outdated_bootstrap(model_dir, version):
        return version
    if version is not None:
        log.warning(
            "the registry serves %s, a bootstrap model for another feature schema; "
            "serving the bootstrap model shipped with this version instead",
            version,
        )
    boot = bootstrap_dir()
    manifest = read_manifest(boot)
    version = str(manifest["version"])
    model_dir.mkdir(parents=True, exist_ok=True)
    if not (model_dir / version).exists():
        staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".staging-"))
        shutil.copytree(boot, staging, dirs_exist_ok=True)
        try:
            publish_version(model_dir, staging, version)
        except (ModelError, OSError):
            # Another worker sharing the volume seeded it first: same files, fine.
            shutil.rmtree(staging, ignore_errors=True)
            if not (model_dir / version / MANIFEST).exists():
                raise
    if current_version(model_dir) != version:
        set_current(model_dir, version)
    return version


def _outdated_bootstrap(model_dir: Path, version: str) -> bool:
    if not version.startswith("bootstrap-") or version == read_manifest(bootstrap_dir())["version"]:
        return False
    try:
        manifest = read_manifest(model_dir / version)
    except ModelError:
        return False  # let loading say what is wrong with it
    return bool(manifest.get("schema_hash") != SCHEMA_HASH)


def load_current(model_dir: Path) -> LoadedModel:
    version = ensure_serving_model(model_dir)
    return load_version(model_dir / version)


HISTORY = "history.jsonl"


def promotion_history(model_dir: Path) -> list[dict[str, Any]]:
    path = model_dir / HISTORY
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def promote(model_dir: Path, version: str, reason: str) -> dict[str, Any]:
    """Make ``version`` current and record why, so rollback knows what came before."""
    load_version(model_dir / version)  # refuse what a worker would refuse
    previous = current_version(model_dir)
    entry = {
        "version": version,
        "previous": previous,
        "reason": reason,
        "at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    # History first, then the pointer: a promoter killed in between leaves an
    # entry for a switch that did not happen (harmless), never a current
    # version that rollback knows nothing about.
    with (model_dir / HISTORY).open("ab") as fh:
        fh.write(orjson.dumps(entry) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    set_current(model_dir, version)
    return entry


def rollback(model_dir: Path) -> dict[str, Any]:
    """Go back to the version that was current before the current one."""
    current = current_version(model_dir)
    for entry in reversed(promotion_history(model_dir)):
        if entry["version"] == current and entry.get("previous"):
            return promote(model_dir, entry["previous"], f"rollback from {current}")
    raise ModelError(f"no earlier promotion than {current!r} is recorded in {model_dir / HISTORY}")
