"""The pure core both the worker and training import: the event contract and
its decoder (``events``), the fold of events into a user's state (``fold``)
and the rule for re-sent events (``dedup``).

Nothing here does I/O or imports the worker or training; the features,
labels, segments and scorer built on it are in ``model/``.
"""
