#!/usr/bin/env bash
# The README's test command: set up (scripts/setup_cpu.sh), then run the test suite on CPU.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
source "$(dirname "$0")/setup_cpu.sh"   # sets PY (a .venv on an externally managed Python) and cd's to the repo
# the multi-node tests (root only; without root they skip and say why) make two hosts with network namespaces
# (iproute2, util-linux), run the DeepSpeed launcher over ssh between them (openssh, pdsh) and a throwaway
# SLURM cluster on them (slurmctld, slurmd, munge): one apt-get call for whatever is missing
if [ "$(id -u)" -eq 0 ]; then
  missing=()
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
  command -v pdsh >/dev/null 2>&1 || missing+=(pdsh)
  [ -x /usr/sbin/slurmctld ] || command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
  [ -x /usr/sbin/slurmd ] || command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
  command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
  [ -x /usr/sbin/munged ] || command -v munged >/dev/null 2>&1 || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
fi
# DeepSpeed JIT-builds a communication op on first use (~1 min): keep it in a cache directory.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export TOKENIZERS_PARALLELISM=false
# every child process (torchrun ranks, spawned workers) prints its Python stacks if a signal kills it
export PYTHONFAULTHANDLER=1
exec "$PY" -m pytest "$@"
