"""Behaviour a model must show: directional expectations and archetype customers
(the development suite and the release suite, written once)."""
