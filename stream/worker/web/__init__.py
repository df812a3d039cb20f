"""What the worker serves over HTTP: /metrics, the probes and the read API."""
