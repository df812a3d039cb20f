"""`segmenter worker`: settings -> topics -> metrics endpoint -> Faust worker."""

from __future__ import annotations

import logging

import faust

from stream.app import create_app
from stream.settings import Settings
from stream.topics import ensure_topics

log = logging.getLogger("segmenter.worker")


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    log.info("settings: %s", settings.safe_summary())
    # The app first: a bad model or playbook should fail before any connection.
    app = create_app(settings)
    ensure_topics(settings)
    log.info(
        "serving model %s; consuming %s as group %r",
        app.segmenter_model.current.version,  # type: ignore[attr-defined]
        ", ".join(settings.input_topics),
        settings.group_id,
    )
    # mode's Worker installs SIGTERM/SIGINT handlers that stop the app in
    # order (agents, then consumer commit, then producer flush) and exit 0.
    faust.Worker(
        app, loglevel=loglevel, quiet=True, redirect_stdouts=False
    ).execute_from_commandline()
