"""Video shards: everything between public annotations + video files and the frames a model reads.

Sub-packages, one job each, listed bottom-up: each imports only what is listed before it (``stream``
not even ``ingest`` or ``synth``), and nothing here imports ``train``, ``eval`` or ``reasoning_gen``.

- ``common``: the bottom layer of the whole project (it imports nothing of it): who this process
  is in a job (``distenv``), files written whole or not at all (``atomic``), the ``python -m``
  dispatcher (``cli``).
- ``schema``: the video record (one per video, all its questions); ``reasoning_records``: the
  reasoning jsonl (schema, crash-safe append writer, reader that joins by qid). Both import only
  ``common``.
- ``ingest``: public annotations -> records (``converters``, ``convert``), videos cut, probed and
  transcoded (``video_io``, ``probe``, ``transcode``), records + videos -> WebDataset tar shards +
  ``sizes.json`` (``writer``), the shard inspector. Offline, once per dataset.
- ``synth``: the synthetic temporal VideoQA dataset (rendered with ``ingest.video_io``).
- ``stream``: the runtime loader: shards -> tar reader -> shuffle -> torchcodec frames -> question
  samples (``pipeline``, ``frames``, ``loader``). It imports ``common``, ``schema`` and
  ``reasoning_records`` only (not ``ingest`` or ``synth``).
- ``bench``: loader and transcode benchmarks; may import all of the above, nothing imports it.

Commands: ``python -m data_shards {convert,synth,write,inspect,load,bench}``. Importing this package
is light (the schema only, no torch).
"""

from data_shards.schema import QA, SCHEMA_VERSION, SchemaError, VideoRecord, make_qid, read_records, write_records

__all__ = ["QA", "SCHEMA_VERSION", "SchemaError", "VideoRecord", "make_qid", "read_records", "write_records"]
