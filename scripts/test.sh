#!/usr/bin/env bash
# The README's test command: set up (scripts/setup_cpu.sh), then run the test suite on CPU.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
source "$(dirname "$0")/setup_cpu.sh"   # sets PY (a .venv on an externally managed Python) and cd's to the repo
# the multi-node tests make two hosts with network namespaces (root only; without root they skip and say why)
if [ "$(id -u)" -eq 0 ]; then
  command -v ip >/dev/null 2>&1 || apt_install iproute2
  command -v unshare >/dev/null 2>&1 || apt_install util-linux
  # ... and the DeepSpeed launcher over ssh between them (an sshd per host, pdsh)
  { [ -x /usr/sbin/sshd ] && command -v ssh >/dev/null 2>&1 && command -v pdsh >/dev/null 2>&1; } ||
    apt_install openssh-server openssh-client pdsh
  # ... and a throwaway SLURM cluster on them (slurmctld, a slurmd per host, munge)
  { command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1 &&
    command -v munged >/dev/null 2>&1; } || apt_install slurmctld slurmd slurm-client munge
fi
# DeepSpeed JIT-builds a communication op on first use (~1 min): keep it in a cache directory.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export TOKENIZERS_PARALLELISM=false
# every child process (torchrun ranks, spawned workers) prints its Python stacks if a signal kills it
export PYTHONFAULTHANDLER=1
exec "$PY" -m pytest "$@"
