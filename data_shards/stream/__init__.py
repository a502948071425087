"""The runtime stream: shards -> split by node and worker -> tar reader that skips and counts bad
members -> shuffle -> torchcodec frame decoding -> one sample per question (``pipeline``,
``frames``), assembled and batched by ``loader.build_loader``. This is what training, reasoning
generation and evaluation read. Imports ``common``, ``schema`` and ``reasoning_records`` only; never
``ingest``, ``synth`` or ``bench``."""
