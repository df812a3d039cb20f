"""Training labels from behaviour after a cutoff. Pure, one rule for every trainer.

For a cutoff T and horizon H, among users first seen at or before T, the
label is what the user did in (T, T + H] (docs/design.md, "Segments and labels"):

* ``high_value``: purchased, spend in the top ``quantile`` of that window's buyers
* ``regular``: purchased, not in the top
* ``potential``: no purchase, but some activity
* ``at_risk``: no activity at all
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from stream.core.events import Folded, OrderEvent, OrderFact


@dataclass(slots=True)
class WindowActivity:
    """What one user did inside a label window."""

    events: int = 0
    orders: int = 0
    spend: float = 0.0
    #: event time of the first order in the window (0 = none)
    first_order_at: int = 0

    def add(self, event: Folded) -> None:
        self.events += 1
        if isinstance(event, OrderEvent | OrderFact):
            if event.event_type == "order_placed":
                self.orders += 1
                self.spend += event.total
                if not self.first_order_at or event.timestamp < self.first_order_at:
                    self.first_order_at = event.timestamp
            else:
                # Money given back did not stay spent: net it out of the window.
                self.spend -= event.total


def window_activity(events: Iterable[Folded]) -> dict[str, WindowActivity]:
    out: dict[str, WindowActivity] = {}
    for event in events:
        act = out.get(event.user_id)
        if act is None:
            act = out[event.user_id] = WindowActivity()
        act.add(event)
    return out


def high_value_line(
    users: Iterable[str], activity: Mapping[str, WindowActivity], top_quantile: float = 0.2
) -> float:
    """The window spend at or above which one of ``users`` who bought is ``high_value``.

    Taken over this window's buyers only, so a label means "top spender among
    those who bought", whatever the season. 0 when nobody bought.
    """
    spend = [max(activity[u].spend, 0.0) for u in users if u in activity and activity[u].orders > 0]
    return float(np.quantile(spend, 1.0 - top_quantile)) if spend else 0.0


def label_users(
    users: Iterable[str],
    activity: Mapping[str, WindowActivity],
    *,
    top_quantile: float = 0.2,
) -> dict[str, str]:
    """Label each of ``users`` from their window activity (absent = no activity)."""
    users = list(users)
    threshold = high_value_line(users, activity, top_quantile)
    labels: dict[str, str] = {}
    for user in users:
        act = activity.get(user)
        if act is None or act.events == 0:
            labels[user] = "at_risk"
        elif act.orders > 0:
            labels[user] = "high_value" if max(act.spend, 0.0) >= threshold else "regular"
        else:
            labels[user] = "potential"
    return labels
