"""The one record type the worker hands around: an input record as fetched."""

from __future__ import annotations

from typing import NamedTuple


class RawRecord(NamedTuple):
    """One input record as the agent hands it over.

    Tuples, not frozen dataclasses, for the per-record types here: a frozen
    dataclass's ``__init__`` sets each field through ``object.__setattr__``,
    which py-spy showed at a few percent of the worker.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def tp(self) -> str:
        return f"{self.topic}:{self.partition}"
