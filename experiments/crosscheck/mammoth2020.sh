#!/usr/bin/env bash
# Cross-check: run the DER paper's own code (mammoth, as published in 2020) on the cells where our Seq-MNIST /
# P-MNIST numbers are off the paper by more than 2 points, with the same seeds we use, and print what it gives.
#
#   bash experiments/crosscheck/mammoth2020.sh MAMMOTH_GIT_DIR DATA_ROOT [OUT_DIR]
#
# MAMMOTH_GIT_DIR: a clone of https://github.com/aimagelab/mammoth (any recent one: commit 5dc82be, 2020-11-19,
#                  "Fix denorm in icarl", is checked out from it; the first commit crashes on seq-mnist iCaRL)
# DATA_ROOT:       the folder holding MNIST/raw/ in torchvision's layout (what clzoo's data.root points at)
# OUT_DIR:         where the two source trees and the log go (default: ./mammoth2020-crosscheck)
#
# Two trees are run: `as_published` (5dc82be unchanged) and `icarl_fixed`, which differs by one line: iCaRL's
# begin_task writes its exemplars back into the MNIST training tensor as `examples.type(torch.uint8)`, and the
# exemplars are ToTensor images in [0, 1], so every pixel truncates to 0 (1 where it was exactly 255): the
# exemplars iCaRL trains on are blank. The fixed tree scales by 255 first. Needs torch, torchvision, numpy,
# Pillow and quadprog (mammoth imports GEM at start-up). The results are appended to OUT_DIR/results.txt, one
# line per run: "<tree> <dataset> <model> <buffer> seed<k>: Accuracy for N task(s): [Class-IL]: .. [Task-IL]: ..".
# Environment: SEEDS="0 1 2" (default), PART=seq|perm|all (default all), JOBS=2 (runs in parallel),
# ONLY=<regex> keeps the runs whose "TREE DATASET MODEL BUFFER SEED" line matches (e.g. ONLY=" agem ").
# The committed log of the run the leaderboard notes cite: experiments/crosscheck/mammoth2020_results.txt.
# Its Seq-MNIST sgd / lwf / si / icarl lines were run before OMP_NUM_THREADS=1 was set here (torch's default,
# 2 threads); thread count changes float sums, e.g. seq-mnist sgd seed 0 gives 19.42 / 95.65 there and
# 19.44 / 95.81 with 1 thread.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: mammoth2020.sh MAMMOTH_GIT_DIR DATA_ROOT [OUT_DIR]"; exit 2; }
MAMMOTH_GIT=$1
[ -d "$2/MNIST/raw" ] || { echo "no MNIST under $2: expected $2/MNIST/raw/*-ubyte (torchvision's layout)"; exit 1; }
DATA_ROOT=$(cd "$2" && pwd)
OUT=${3:-mammoth2020-crosscheck}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
COMMIT=5dc82be

for tree in as_published icarl_fixed; do
  rm -rf "$OUT/$tree" && mkdir -p "$OUT/$tree"
  git -C "$MAMMOTH_GIT" archive "$COMMIT" | tar -x -C "$OUT/$tree"
  # mammoth reads ./data/MNIST/<dataset class name>/raw; both class names point at the same files
  mkdir -p "$OUT/$tree/data/MNIST"
  ln -sfn "$DATA_ROOT/MNIST" "$OUT/$tree/data/MNIST/MNIST"
  ln -sfn "$DATA_ROOT/MNIST" "$OUT/$tree/data/MNIST/MyMNIST"
done
python3 - "$OUT/icarl_fixed/models/icarl.py" <<'EOF'
import sys
path = sys.argv[1]
src = open(path).read()
blank = "denorm(\n                        self.buffer.examples[i].type(torch.uint8)"
assert blank in src, "mammoth's iCaRL is not the 5dc82be one"
open(path, "w").write(src.replace(blank, "denorm(\n                        (self.buffer.examples[i] * 255).round().type(torch.uint8)"))
EOF

run() {  # run TREE DATASET MODEL BUFFER SEED
  local tree=$1 dataset=$2 model=$3 buffer=$4 seed=$5 extra=() line
  [ "$buffer" != - ] && extra=(--buffer_size "$buffer")
  line=$(cd "$OUT/$tree" && PYTHONPATH=. python utils/main.py --model "$model" --load_best_args \
           --dataset "$dataset" --seed "$seed" "${extra[@]}" 2>&1 | tr '\r' '\n' | grep "Accuracy for" | tail -1)
  echo "$tree $dataset $model $buffer seed$seed: ${line:-FAILED}" | tee -a "$OUT/results.txt"
}
export -f run; export OUT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # JOBS processes share the cores

specs() {  # one "TREE DATASET MODEL BUFFER SEED" per line; PART=seq|perm|all picks the protocol
  for seed in ${SEEDS:-0 1 2}; do
    if [ "${PART:-all}" != perm ]; then
      for model in sgd lwf si; do echo "as_published seq-mnist $model - $seed"; done
      for buffer in 200 500 5120; do
        echo "as_published seq-mnist icarl $buffer $seed"; echo "icarl_fixed seq-mnist icarl $buffer $seed"
        echo "as_published seq-mnist agem $buffer $seed"
      done
    fi
    if [ "${PART:-all}" != seq ]; then
      for model in sgd ewc_on; do echo "as_published perm-mnist $model - $seed"; done
      echo "as_published perm-mnist agem 5120 $seed"
    fi
  done
}
# JOBS runs in parallel (default 2); online EWC on perm-mnist takes the longest (its Fisher is per sample)
selected=$(specs | grep -E -- "${ONLY:-.}") || { echo "ONLY='$ONLY' matches none of the runs (PART=${PART:-all})"; exit 1; }
echo "$selected" | xargs -P "${JOBS:-2}" -L 1 bash -c 'run "$@"' _
