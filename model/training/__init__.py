"""Training (TensorFlow/Keras): events -> dataset -> network -> assessment -> gate -> report.

``sources`` decodes replayed records, ``dataset`` folds them into
point-in-time rows with labels, ``network``/``monotone`` define the network,
``fit``/``calibrate``/``stacking`` fit it and choose its value head, and
``train`` writes the artifact. ``assess`` judges it against ``baselines``
(majority, previous segment, RFM, BG/NBD + Gamma-Gamma: ``btyd``/``clv``) with
``ranking``/``evaluate`` metrics and the checks of the ``behaviour`` package
(directional expectations, archetype customers). The ``gate`` package decides
promotion on paired evidence; the ``report`` package writes what a data team reads.
"""
