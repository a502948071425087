"""Throughput benchmarks of the trainer (never imported by the runtime): ours vs a bare PyTorch
loop (:mod:`.step`), padded vs packed micro-batches (:mod:`.packing`), command line in :mod:`.cli`."""
