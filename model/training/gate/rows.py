"""The rows the gate scores models on, as kept beside each model in ``validation.npz``.

A trained model keeps its validation rows (users at the validation cutoff V)
and its backtest rows (the same population at the earlier closed cutoffs of
:func:`model.training.dataset.gate_cutoffs`), each row with its user's
integer id across cutoffs, so that the gate's paired resampling weighs a
user's rows together. The baselines' decisions on the V rows are kept too, so
the gate compares the candidate with each baseline row by row, not by two
numbers.

A model written before backtest rows existed has only the V rows: it is
judged at one cutoff, and the record says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.training.dataset import Examples, Prepared

FILE = "validation.npz"
_BASELINE = "baseline_"


@dataclass
class GateRows:
    x: np.ndarray
    y: np.ndarray
    spend: np.ndarray | None  # realised spend in the row's window (None: not kept)
    cutoffs: np.ndarray  # the cutoff (ms) of each row
    groups: np.ndarray  # each row's user, as an integer shared across cutoffs
    validation: np.ndarray  # mask of the rows at V (the rows the manifest's metrics are on)
    #: each baseline's class indices on the V rows, in their order
    baselines: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def cutoff_list(self) -> list[int]:
        return [int(c) for c in np.unique(self.cutoffs)]


def user_groups(parts: Sequence[Prepared]) -> tuple[np.ndarray, np.ndarray]:
    """Integer user ids for every part's (V rows, backtest rows), shared across cutoffs.

    Parts are separate populations: the same name in two of them is two users."""
    keys = [f"{i}\x00{u}" for i, p in enumerate(parts) for u in p.val.users]
    n_val = len(keys)
    keys += [f"{i}\x00{u}" for i, p in enumerate(parts) for u in p.backtest.users]
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes = np.unique(np.asarray(keys), return_inverse=True)[1].reshape(-1).astype(np.int64)
    return codes[:n_val], codes[n_val:]


def save(
    path: Path,
    val: Examples,
    backtest: Examples,
    groups: tuple[np.ndarray, np.ndarray],
    baselines: dict[str, np.ndarray],
) -> None:
    arrays: dict[str, Any] = dict(
        x=val.x,
        y=val.y,
        spend=val.spend,
        thresholds=val.thresholds,
        cutoffs=val.cutoffs,
        groups=groups[0],
        backtest_x=backtest.x,
        backtest_y=backtest.y,
        backtest_spend=backtest.spend,
        backtest_cutoffs=backtest.cutoffs,
        backtest_groups=groups[1],
    )
    arrays.update({_BASELINE + name: pred for name, pred in baselines.items()})
    np.savez_compressed(path, **arrays)


def load(path: Path, validation_cutoff: int | None = None) -> GateRows:
    """Every row the gate scores: V's first, then the backtest rows."""
    with np.load(path) as f:
        x, y = f["x"], f["y"]
        n = len(y)
        spend = f["spend"] if "spend" in f.files else None
        cutoffs = f["cutoffs"] if "cutoffs" in f.files else np.full(n, validation_cutoff or 0)
        groups = f["groups"] if "groups" in f.files else np.arange(n)
        baselines = {k[len(_BASELINE) :]: f[k] for k in f.files if k.startswith(_BASELINE)}
        if "backtest_x" in f.files and len(f["backtest_y"]):
            x = np.concatenate([x, f["backtest_x"]])
            y = np.concatenate([y, f["backtest_y"]])
            spend = None if spend is None else np.concatenate([spend, f["backtest_spend"]])
            cutoffs = np.concatenate([cutoffs, f["backtest_cutoffs"]])
            groups = np.concatenate([groups, f["backtest_groups"]])
    validation = np.zeros(len(y), dtype=bool)
    validation[:n] = True
    return GateRows(x, y, spend, cutoffs, groups, validation, baselines)
