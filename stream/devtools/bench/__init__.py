"""`segmenter bench`: how fast the pipeline is, compared with what, and where the time goes.

One run, one process tree, one broker and one Redis for every phase:

* **R**: a raw aiokafka ``getmany`` drain of the input topics (the transport's limit);
* **B0**: a bare faust-streaming agent with default settings iterating
  ``stream.take(1000, within=0.05)`` (what a user writes first), in its own process;
* **P**: ``segmenter worker`` process(es) with the settings the project ships,
  draining the same backlog: decode, validate, fold, Redis, score, publish;
* **peers** (``--peers bytewax,quix``): bytewax's and quix-streams' trivial fold
  (a count and a spend per user) on the same backlog, each in its own process;
* **latency**: paced events at B0's measured throughput (or a fraction of P's),
  stamped with the wall clock, against a consumer of ``customer-segments``:
  event time to the segment change being readable; a plain consumer of the
  inputs times the same records (the transport's floor).

Throughputs come from the same kind of samples in every phase (records done
over time) as the rate between 10% and 90% of the backlog, so start-up, group
joins and the last partial batches do not count. The per-stage breakdown comes
from the worker's own Prometheus histograms over that same window, and, with
``--profile``, from a py-spy profile of the worker.

By default the broker (Tansu) and Redis are embedded and thrown away. Given
``kafka_url``/``redis_url`` it uses those instead: its own topics
(``bench-<run>-*``, deleted afterwards) and its own key prefix (deleted
afterwards: never FLUSHDB/FLUSHALL).

Modules: ``config`` (what a run is asked), ``runner`` (phases R, B0, P),
``latency_phases`` and ``latency`` (latency, the transport's floor, the curve),
``measure`` (helpers), ``servers`` (embedded servers, clean-up), ``results``
(the result, its JSON and its table), ``passthrough`` (the B0 process),
``audiences`` (the audiences of ``--audiences N``), and ``peers`` (the phase of
``--peers``) with ``peer_child``, ``peer_bytewax`` and ``peer_quix`` (the peer
processes). None of them is imported by the worker.
"""

from stream.devtools.bench.config import BenchConfig, BenchError
from stream.devtools.bench.results import JSON_KEYS, BenchResult, render
from stream.devtools.bench.runner import Bench, run_bench

__all__ = ["JSON_KEYS", "Bench", "BenchConfig", "BenchError", "BenchResult", "render", "run_bench"]
