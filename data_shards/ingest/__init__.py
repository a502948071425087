"""Ingest: public annotations -> records (``converters``, ``convert``), videos cut with the ffmpeg
CLI (``video_io``), probed with torchcodec (``probe``) and transcoded (``transcode``), records +
videos -> WebDataset tar shards with a ``sizes.json`` (``writer``), and a shard inspector
(``inspect_shards``). Runs once per dataset, offline. Imports ``common`` and ``schema`` only."""
