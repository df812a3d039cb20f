"""Seasonality: thinning a population's Poisson processes by hour, weekday and day of year.

Acquisition, purchases and browsing all go through :func:`_after` or
:func:`_seasonal_uniform`, so one :class:`_Season` per population shapes them
alike (see :mod:`stream.training.populations`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from stream.training.generate import _HOUR_WEIGHTS, DAY_MS, HOUR_MS
from stream.training.population_config import _SESSION_COOLDOWN_MS, PopulationConfig

#: Day-of-week shape, Monday first, mean 0 and range [-1, 1]: a weekday's
#: intensity is ``1 + weekly_amplitude * shape`` (online shops peak at the start
#: of the week and dip on Friday and Saturday).
WEEKLY_SHAPE: Final[tuple[float, ...]] = (1.0, 0.5, 0.2, 0.0, -0.7, -1.0, 0.0)
#: Mean Gregorian year: the day of the year is days since 1970-01-01 modulo
#: this, within a day of the calendar's.
_YEAR_DAYS: Final = 365.2425
#: 1970-01-01 was a Thursday: hours since the epoch + 72 counts from a Monday.
_EPOCH_HOUR_OF_WEEK: Final = 72


@dataclass(frozen=True, slots=True)
class _Season:
    """Acceptance of the thinned processes by hour of the week and day of the year."""

    #: Hour of the day x day of the week (from Monday 00:00 UTC), max 1.
    hour_of_week: tuple[float, ...]
    #: Day of the year (0 is January 1st), max 1; index 365 is the quarter day.
    day_of_year: tuple[float, ...]
    #: Candidates per accepted event on average (1 / the mean acceptance).
    boost: float


def _season(cfg: PopulationConfig) -> _Season:
    week = [
        hour * (1.0 + cfg.weekly_amplitude * day) for day in WEEKLY_SHAPE for hour in _HOUR_WEIGHTS
    ]
    top = max(week)
    week = [w / top for w in week]
    year = [
        1.0
        + cfg.yearly_amplitude
        * math.cos(2 * math.pi * (d + 0.5 - cfg.yearly_peak_day) / _YEAR_DAYS)
        for d in range(366)
    ]
    top = max(year)
    year = [w / top for w in year]
    # The last index is reached a quarter of a day a year (the .2425).
    mean_year = (sum(year[:365]) + (_YEAR_DAYS - 365) * year[365]) / _YEAR_DAYS
    boost = 1.0 / (sum(week) / len(week) * mean_year)
    return _Season(tuple(week), tuple(year), boost)


def _accept(season: _Season, rng: random.Random, t: int) -> bool:
    hour = season.hour_of_week[(t // HOUR_MS + _EPOCH_HOUR_OF_WEEK) % 168]
    return rng.random() < hour * season.day_of_year[int(t / DAY_MS % _YEAR_DAYS)]


def _after(season: _Season, rng: random.Random, t: int, rate_per_day: float) -> float:
    """Next event of the seasonally thinned Poisson process at ``rate_per_day`` after ``t``.

    ``rate_per_day`` is the mean over a year; inf when it is 0. The first 30
    minutes after ``t`` are skipped: negligible against days, and two sessions
    of one user never start on top of each other.
    """
    if rate_per_day <= 0.0:
        return math.inf
    # Candidates come faster by the boost, so after thinning the mean rate holds.
    per_ms = rate_per_day * season.boost / DAY_MS
    t += _SESSION_COOLDOWN_MS
    while True:
        t += int(rng.expovariate(per_ms)) + 1
        if _accept(season, rng, t):
            return t


def _seasonal_uniform(season: _Season, rng: random.Random, lo: int, span: int) -> int:
    """A time in ``[lo, lo + span]`` with the seasonal profile (rejection sampling)."""
    while True:
        t = lo + rng.randint(0, max(span, 0))
        if _accept(season, rng, t):
            return t
