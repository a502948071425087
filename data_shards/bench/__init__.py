"""Benchmarks of the data path (never imported by runtime code): loader throughput against
sequential PyAV decoding (``loader_bench``), long-GOP source videos (``sources``) and the
write-time transcode sweep (``transcode_sweep``)."""
