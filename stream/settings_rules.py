"""Cross-setting rules of erasure, the rate limit, batching and the re-evaluation
schedule (kept out of stream.settings, which is near its size limit). Each
problem is one line naming what to fix."""

from __future__ import annotations

import ipaddress
from typing import Protocol

from pydantic import SecretStr

MIN_KEY_LEN = 16

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Rules(Protocol):
    retention_days: float
    forget_denylist_days: float
    erasure_key: SecretStr | None
    trusted_proxies: str
    reevaluate_days: tuple[float, ...]
    stream_buffer_maxsize: int
    batch_max: int


def trusted_networks(text: str) -> list[Network]:
    """``SEGMENTER_TRUSTED_PROXIES`` parsed; ValueError names a bad entry."""
    out: list[Network] = []
    for part in text.split(","):
        if part := part.strip():
            try:
                out.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{part!r} is not an address or a CIDR network") from None
    return out


def more_problems(s: _Rules) -> list[str]:
    problems: list[str] = []
    if list(s.reevaluate_days) != sorted(set(s.reevaluate_days)) or any(
        not (0 < d < 100_000)
        for d in s.reevaluate_days  # also refuses NaN and Infinity
    ):
        problems.append("SEGMENTER_REEVALUATE_DAYS must be increasing positive days, e.g. [30,60]")
    if s.stream_buffer_maxsize < s.batch_max:
        problems.append(
            f"SEGMENTER_STREAM_BUFFER_MAXSIZE={s.stream_buffer_maxsize} must be at least "
            f"SEGMENTER_BATCH_MAX={s.batch_max}, or batches could never fill"
        )
    if s.retention_days > s.forget_denylist_days:
        # The list must outlive every event a replay could still fold: an entry
        # pruned before retention lets the user's old events rebuild them.
        problems.append(
            f"SEGMENTER_RETENTION_DAYS={s.retention_days:g} exceeds "
            f"SEGMENTER_FORGET_DENYLIST_DAYS={s.forget_denylist_days:g}: raise "
            f"SEGMENTER_FORGET_DENYLIST_DAYS to at least {s.retention_days:g}, or an erased "
            "user's old events come back on a replay"
        )
    if s.erasure_key is not None and len(s.erasure_key.get_secret_value()) < MIN_KEY_LEN:
        problems.append(
            f"SEGMENTER_ERASURE_KEY must be at least {MIN_KEY_LEN} characters (it has "
            f"{len(s.erasure_key.get_secret_value())})"
        )
    try:
        trusted_networks(s.trusted_proxies)
    except ValueError as exc:
        problems.append(f"SEGMENTER_TRUSTED_PROXIES: {exc}; e.g. 10.0.0.0/8,127.0.0.1")
    return problems
