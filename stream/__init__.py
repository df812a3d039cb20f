"""The streaming side of the segmenter.

- ``core/``: the pure event contract, fold and dedup rule (no I/O).
- ``worker/``: the Faust worker: consume, fold, score, publish, commit; its
  Redis store and its HTTP API. ``import stream.worker`` loads exactly this.
- ``training/``: the data team's side: replay and import events, synthetic
  populations, export, and the retrain job.
- ``cli/``: the ``segmenter`` command, the one place that imports all of them.
- ``devtools/``: the benchmark, the demo and the embedded servers; never
  imported by the worker or by training.

The modules at this level are shared by the worker and training: settings
(and their errors and redaction), topics, Kafka sinks, metrics, the Redis
client, model announcements and the /metrics server.
"""
