"""The erasure list: who `segmenter forget` erased, and when.

It outlives the state. The state is rebuilt under a new ``SEGMENTER_REDIS_PREFIX``
by replaying the input topics (deploy/README.md), so the list lives under its
own prefix (``SEGMENTER_ERASURE_PREFIX``), which a rebuild keeps: a rebuilt
state drops an erased user's old events as the live one does.

An entry is a keyed digest of the user id as stored (its pseudonym when
pseudonymising): HMAC-SHA256 with ``SEGMENTER_ERASURE_KEY``, or
``SEGMENTER_PSEUDONYMIZE_KEY`` when that is unset. Unkeyed, anyone who can
read Redis could confirm a guessed id. The list also keeps a check value of
its key, so that a worker or a `forget` with another key (or none) is refused
rather than silently missing every entry.

Retrain and export read the list too (:class:`ErasedUsers`): an
erased user's events from before their erasure never reach a training row or
an export.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from stream.core.events import _to_epoch_ms
from stream.privacy import pseudonym
from stream.settings import Settings

#: Domain separation: the same key may also pseudonymise ids.
_DIGEST_DOMAIN = b"segmenter-erased\x00"
_CHECK_DOMAIN = b"segmenter-erasure-key-check"


class ErasureKeyError(RuntimeError):
    """No erasure key, or not the one the erasure list was written with."""


def erasure_key(settings: Settings) -> bytes | None:
    """The erasure list's HMAC key: the dedicated one, else the pseudonymisation key."""
    secret = settings.erasure_key or settings.pseudonymize_key
    return None if secret is None else secret.get_secret_value().encode()


def erasure_digest(key: bytes, user_id: str) -> bytes:
    """What the list keeps of a (stored) user id: a keyed digest, never the id."""
    return hmac.new(key, _DIGEST_DOMAIN + user_id.encode(), hashlib.sha256).digest()[:16]


def key_check(key: bytes | None) -> bytes:
    """A value that tells keys apart without revealing them (stored with the list).
    Raises :class:`ErasureKeyError` without a key: nothing may be erased then."""
    if key is None:
        raise ErasureKeyError(
            "`segmenter forget` needs SEGMENTER_ERASURE_KEY (or SEGMENTER_PSEUDONYMIZE_KEY): "
            "the erasure list is keyed with it; give the workers the same key"
        )
    return hmac.new(key, _CHECK_DOMAIN, hashlib.sha256).hexdigest()[:16].encode()


def check_key(stored: bytes | None, key: bytes | None, prefix: str) -> None:
    """Refuse a key that cannot read the list (``stored`` is its check value, if any)."""
    if stored is None:
        return
    if key is None:
        raise ErasureKeyError(
            f"the erasure list under SEGMENTER_ERASURE_PREFIX={prefix} is keyed: set "
            "SEGMENTER_ERASURE_KEY (or SEGMENTER_PSEUDONYMIZE_KEY) as `segmenter forget` had it"
        )
    if not hmac.compare_digest(stored, key_check(key)):
        raise ErasureKeyError(
            f"the erasure list under SEGMENTER_ERASURE_PREFIX={prefix} was written with another "
            "key: set SEGMENTER_ERASURE_KEY (or SEGMENTER_PSEUDONYMIZE_KEY) as it was"
        )


def load_erased(settings: Settings) -> ErasedUsers:
    """The erasure list now (one short-lived connection)."""
    from stream.redis_client import sync_client_from_url

    client = sync_client_from_url(
        settings.redis_url, cluster=settings.redis_cluster, **settings.redis_client_kwargs()
    )
    try:
        return ErasedUsers.load(settings, client)
    finally:
        client.close()


def erased_key(prefix: str, group: int | str) -> str:
    """The list's sorted set for a hash-tag group: in the same slot as the group's
    state keys under any state prefix (stream.worker.state.keys)."""
    return f"{prefix}:{{{group}}}:erased"


def check_value_key(prefix: str) -> str:
    return f"{prefix}:key_check"


class ErasedUsers:
    """The erasure list read once, for replays outside the worker (retrain, export)."""

    def __init__(self, settings: Settings, entries: dict[bytes, int]) -> None:
        self._key = erasure_key(settings)
        pkey = settings.pseudonymize_key
        self._pkey = None if pkey is None else pkey.get_secret_value().encode()
        self._entries = entries

    @classmethod
    def load(cls, settings: Settings, client: Any) -> ErasedUsers:
        """Read the list with a synchronous redis client (single or cluster)."""
        prefix = settings.erasure_prefix
        check_key(client.get(check_value_key(prefix)), erasure_key(settings), prefix)
        entries: dict[bytes, int] = {}
        # By pattern: the groups are the worker's layout, and a cluster client
        # scans every primary.
        for key in client.scan_iter(match=erased_key(prefix, "*"), count=1000):
            entries.update(
                (bytes(d), int(float(t))) for d, t in client.zrange(key, 0, -1, withscores=True)
            )
        return cls(settings, entries)

    def __len__(self) -> int:
        return len(self._entries)

    def erased_at(self, user_id: str, stored: bool = False) -> int:
        """When the user was erased (epoch ms), 0 if not. ``user_id`` is the raw id
        (input topics) unless ``stored`` (output topics carry the stored id)."""
        if not self._entries or self._key is None:
            return 0
        uid = user_id
        if not stored and self._pkey is not None:
            uid = pseudonym(self._pkey, user_id)
        return self._entries.get(erasure_digest(self._key, uid), 0)

    def keeps(self, user_id: str | None, timestamp_ms: int, stored: bool = False) -> bool:
        """False for an event of an erased user from before their erasure (the
        worker's rule: later activity is theirs again)."""
        if user_id is None:
            return True
        at = self.erased_at(user_id, stored)
        return at == 0 or timestamp_ms > at

    def filter_records(
        self,
        records: Iterable[tuple[Any, ...]],
        input_topics: Iterable[str],
        dropped: list[int] | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """``(topic, key, value, ...)`` records without erased users' earlier ones.

        The user is the value's ``user_id`` (the key when it has none); input
        topics carry the raw id, the others the stored one. ``dropped`` (one
        counter) counts what was left out."""
        inputs = set(input_topics)
        for rec in records:
            if self._entries and not self._keep_record(rec, inputs):
                if dropped is not None:
                    dropped[0] += 1
                continue
            yield rec

    def _keep_record(self, rec: tuple[Any, ...], inputs: set[str]) -> bool:
        topic, key, value = rec[0], rec[1], rec[2]
        user: str | None = None
        when = 0
        if value is not None:
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                uid = obj.get("user_id")
                user = uid if isinstance(uid, str) else None
                when = _millis(obj.get("timestamp", obj.get("event_time")))
        if user is None and key is not None:
            user = key.decode("utf-8", "replace")
        # An unreadable time counts as before the erasure: when in doubt, leave it out.
        return self.keeps(user, when, stored=topic not in inputs)


def _millis(value: Any) -> int:
    try:
        return _to_epoch_ms(value) if value is not None else 0
    except ValueError:
        return 0
