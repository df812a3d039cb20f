"""The audiences `segmenter bench --audiences N` serves: conditions of the kinds users write."""

from __future__ import annotations

from pathlib import Path

#: Ten shapes: thresholds on money, recency and activity, the segment and the
#: model's probabilities, conjunctions and disjunctions. Beyond ten they repeat
#: with other thresholds, so no two audiences are the same condition.
_SHAPES = (
    "spend_90d >= {a}00.0 && days_since_last_order <= 14.0",
    'segment == "high_value" && p_at_risk < 0.{b}',
    "product_views_30d >= {a}.0 && orders_30d < 1.0",
    "days_since_last_activity > {a}.0 && cart_adds_30d >= 1.0",
    "total_spend >= {a}000.0",
    "order_count >= {a}.0 && return_ratio < 0.2",
    "p_high_value > 0.{b} || p_regular > 0.6",
    "tenure_days < {a}0.0 && session_count >= 2.0",
    'segment in ["potential", "at_risk"] && product_views_30d > {a}.0',
    "avg_order_value >= {a}00.0",
)


def write_bench_audiences(path: Path, n: int) -> Path:
    lines = ["audiences:"]
    for i in range(n):
        round_, shape = divmod(i, len(_SHAPES))
        when = _SHAPES[shape].format(a=round_ + 1, b=min(9, round_ + 3))
        lines += [f"  - name: bench_{i}", f"    when: '{when}'"]
    path.write_text("\n".join(lines) + "\n")
    return path
