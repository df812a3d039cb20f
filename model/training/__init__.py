"""Training (TensorFlow/Keras): events -> dataset -> network -> assessment -> gate -> report.

``sources`` decodes replayed records, ``dataset`` folds them into
point-in-time rows with labels, ``network``/``monotone`` define the MLP,
``train`` fits it, ``assess`` judges it against ``baselines`` (majority,
previous segment, RFM, BTYD ``btyd``/``clv``), ``behaviour`` and
``archetypes``; ``gate`` decides promotion and ``report``/``report_sections``
write what a data team reads.
"""
