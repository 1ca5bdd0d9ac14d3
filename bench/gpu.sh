#!/usr/bin/env bash
# The GPU table of issue 18: clzoo vs Avalanche vs a bare PyTorch loop on one NVIDIA GPU, written to
# bench/RESULTS_gpu.md. A few minutes on a recent GPU: Seq-CIFAR-10 ER on the full ResNet-18 (one epoch per task)
# and Seq-MNIST ER, two timed seeds, every system in one process (see bench/README.md, "On a GPU").
#
#   pip install -e ".[test,bench]"     # once
#   bash bench/gpu.sh                  # checks the CUDA code path (tests), then writes bench/RESULTS_gpu.md
#   bash bench/gpu.sh --dry-run        # the same script on the CPU, tiny: checks it runs (bench/out/GPU_DRYRUN.md)
#
# Data: CIFAR-10 and MNIST from --data-root / $CLZOO_DATA (as bench/run.py); extra arguments go to bench/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export MPLBACKEND=Agg PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--dry-run" ]]; then
    shift
    python bench/run.py --suite gpu --device cpu --quick --out bench/out/GPU_DRYRUN.md "$@"
    exit 0
fi

python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: error: torch finds no CUDA GPU here; run it on a machine with one "
             "(bash bench/gpu.sh --dry-run checks the script on a CPU)")
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
# the CUDA code path first: no host-device synchronisation per step, the buffer on the GPU, amp / compile wiring;
# the table is written whatever the tests say, and the script fails at the end if they failed
tests=0
python -m pytest -p no:cacheprovider -q tests/test_acceleration.py || tests=$?
python bench/run.py --suite gpu --device cuda --seeds 0 1 --acc-seeds --out bench/RESULTS_gpu.md "$@"
if [[ $tests -ne 0 ]]; then
    echo "bench/gpu.sh: tests/test_acceleration.py failed on this GPU (output above); the table was written" >&2
    exit "$tests"
fi
