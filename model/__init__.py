"""The model: what serving needs at this level, how it is trained in ``training/``.

Serving (imported by the worker; NumPy only): ``features``, ``labels``,
``segments``, ``scorer``, ``explain``, ``registry`` and ``drift``.
``training/`` (TensorFlow/Keras) builds the dataset from replayed events,
trains, assesses against baselines and archetypes, gates and reports; it is
never imported by the worker.
"""
