"""Per-dataset converters from public annotation files to schema-v1 rows (see ``data_shards.ingest.convert``)."""
