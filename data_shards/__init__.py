"""Video shards: the record schema, dataset converters, the synthetic dataset, the WebDataset
shard writer, and the streaming loader that decodes frames with torchcodec.

Must not import ``train``.
"""

from data_shards.schema import QA, SCHEMA_VERSION, SchemaError, VideoRecord, make_qid, read_records, write_records

__all__ = ["QA", "SCHEMA_VERSION", "SchemaError", "VideoRecord", "make_qid", "read_records", "write_records"]
