"""The data team's side of the stream: where training's events come from and go.

Replay of the input topics (``replay``), the retrain job (``retrain``),
imports of real purchase logs (``importers``, ``event_files``), synthetic
populations (``generate``, ``populations``), writing events to Kafka or files
(``produce``, ``export``). Never imported by the worker.
"""
