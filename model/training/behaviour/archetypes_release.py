"""The release suite of archetypes: written once (2026-12-07), never changed to make a model pass.

The development suite (:data:`model.training.behaviour.archetypes.ARCHETYPES`) is what
models were built against; a model shaped until it passes those proves
little about customers it was not shaped on. These were written from the
label definition alone (docs/design.md, "Segments and labels": a segment is
what the customer does in the next H days), before any model was scored on
them, and the gate runs both suites. If a model fails one, the model is
wrong or the label definition is; the archetype is not edited.

Each buyer browses before each order (a session of views and a cart add the
same day), as shop customers do. A model trained on orders alone is judged
on the orders alone (``clicks_optional``), since the segment of a buyer does
not rest on their browsing.
"""

from __future__ import annotations

from model.training.behaviour.archetypes import Archetype, Pair, _order, _session
from stream.core.events import Event


def _shopper(user: str, days_ago: list[float], total: float) -> list[Event]:
    """An order ``total`` on each of ``days_ago``, each after a 5-view session with a cart add."""
    events: list[Event] = []
    for n, d in enumerate(sorted(days_ago, reverse=True)):
        events += _session(user, n, d + 0.01, 5, 1)
        events.append(_order(user, n, d, total))
    return events


RELEASE: tuple[Archetype, ...] = (
    Archetype(
        "release_frequent_buyer_gone_150d",
        "6 orders of EUR 120 in 30 days, then 150 days of silence",
        lambda: _shopper("r-burst", [150 + 6 * i for i in range(6)], 120.0),
        # Bought often, then nothing for five times the longest gap seen:
        # no activity in the next H is the outcome the label expects.
        frozenset({"at_risk"}),
        clicks_optional=True,
    ),
    Archetype(
        "release_big_buyer_gone_320d",
        "10 orders of EUR 500 over 90 days, then 320 days of silence",
        lambda: _shopper("r-big", [320 + 10 * i for i in range(10)], 500.0),
        frozenset({"at_risk"}),
        clicks_optional=True,
    ),
    Archetype(
        "release_weekly_buyer",
        "an order of EUR 60 every 7 days for 300 days, the last 2 days ago",
        lambda: _shopper("r-weekly", [2 + 7 * i for i in range(43)], 60.0),
        # About 13 orders are due in the next 90 days: a purchase, whatever its rank.
        frozenset({"regular", "high_value"}),
        clicks_optional=True,
    ),
    Archetype(
        "release_monthly_buyer",
        "an order of EUR 35 every 30 days for two years, the last 12 days ago",
        lambda: _shopper("r-monthly", [12 + 30 * i for i in range(24)], 35.0),
        frozenset({"regular", "high_value"}),
        clicks_optional=True,
    ),
    Archetype(
        "release_new_browser",
        "4 sessions of 6 views in the last 10 days, never ordered",
        lambda: [e for k in range(4) for e in _session("r-browse", k, 1 + 3 * k, 6, 0)],
        # Active now, no order yet: the label's "engaged, may convert".
        frozenset({"potential"}),
        needs_clicks=True,
    ),
)

RELEASE_PAIRS: tuple[Pair, ...] = (
    Pair(
        "release_silence_after_frequent_buying",
        "6 orders of EUR 120 in 30 days, scored 150 vs 20 days after the last: "
        "longer silence is not less at risk",
        "at_risk",
        higher=lambda: _shopper("r-pair", [6 * i for i in range(6)], 120.0),
        lower=lambda: _shopper("r-pair", [6 * i for i in range(6)], 120.0),
        higher_after_days=150.0,
        lower_after_days=20.0,
    ),
)
