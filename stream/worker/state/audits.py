"""What the store offers audits, exports, benchmarks and tests: scans of
everything under a prefix. None of it is on a batch's path."""

from __future__ import annotations

from typing import Any

from stream.worker.state.keys import KeyLayout


class StoreAudits:
    """Mixed into stream.worker.state.store.StateStore (its client, prefix and keys)."""

    _r: Any
    prefix: str
    keys: KeyLayout

    async def bucket_records(self, group: int) -> list[bytes]:
        """The stored records of one hash-tag group (for audits and benchmarks)."""
        async with self._r.pipeline(transaction=False) as pipe:
            for key in self.keys.buckets_of(group):
                pipe.hvals(key)
            return [v for vals in await pipe.execute() for v in vals]

    async def scan_users(self, count: int = 1000) -> list[str]:
        """Every user id under this prefix (for tests, export and audits; not the hot path)."""
        users = []
        async for key in self._r.scan_iter(match=f"{self.prefix}:{{*}}:b:*", count=count):
            users += [u.decode() for u in await self._r.hkeys(key)]
        return users

    async def memory_per_user(self) -> dict[str, float]:
        """Bytes Redis holds per stored user, by kind of key (MEMORY USAGE; for benchmarks)."""
        totals = dict.fromkeys(["records", "members", "schedule", "other"], 0)
        async for key in self._r.scan_iter(match=f"{self.prefix}:*", count=1000):
            kind = self.keys.kind(key.decode())
            totals[kind] += int(await self._r.memory_usage(key, samples=0) or 0)
        users = max(1, len(await self.scan_users()))
        out = {k: v / users for k, v in totals.items()}
        out["total"] = sum(totals.values()) / users
        return out

    async def delete_prefix(self) -> int:
        """Delete every key under this prefix (tests and `segmenter demo` clean-up only)."""
        n = 0
        async for key in self._r.scan_iter(match=f"{self.prefix}:*", count=1000):
            n += await self._r.delete(key)
        return n


__all__ = ["StoreAudits"]
