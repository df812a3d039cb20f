"""Pseudonymisation of user ids on ingest (keyed HMAC-SHA256). Pure.

With ``SEGMENTER_PSEUDONYMIZE_KEY`` set, the raw id never reaches Redis or
the output topics: the worker swaps it for ``p_<32 hex>`` straight after
validation. The same key always gives the same pseudonym, so a user's events
still meet in one state; without the key the pseudonym cannot be reversed or
recomputed. The DLQ is the exception: it keeps rejected records' original
bytes untouched, by contract, and should be access-controlled accordingly.
"""

from __future__ import annotations

import hashlib
import hmac


def pseudonym(key: bytes, user_id: str) -> str:
    return "p_" + hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
