"""``python -m train.bench``: see :mod:`train.bench.cli`."""

from data_shards.common.distenv import exit_process
from train.bench.cli import main

if __name__ == "__main__":
    exit_process(main())
