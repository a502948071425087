"""Ingest: public annotations -> records (``converters``, ``convert``), videos probed, cut and
transcoded (``video_io``, ``transcode``), records + videos -> WebDataset tar shards with a
``sizes.json`` (``writer``), and a shard inspector. Runs once per dataset, offline."""
