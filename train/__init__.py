"""Model assembly, multi-task batches and loss, the DeepSpeed ZeRO-3 engine, launch,
checkpoints and the throughput bench."""
