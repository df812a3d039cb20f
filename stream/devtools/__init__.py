"""Development tools, kept out of the product's import path: the benchmark
(``bench``), the demo (``demo``) and the embedded Kafka-protocol broker and
Redis they and the tests start (``embedded``)."""
