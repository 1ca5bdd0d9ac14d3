#!/usr/bin/env bash
# Cross-check: run the MIR paper's own code (optimass/Maximally_Interfered_Retrieval, er_main.py / mir.py) on the
# data of experiments/online_cifar10.yaml (the suite's fixed 500 training images per class, 1,000 test images per
# task, 5 tasks of 2 classes in the natural class order), with the seeds we use, and print what ER and ER-MIR give;
# the suite's mir / er_rand cells are compared with it (log: experiments/crosscheck/mir_cifar10_results.txt).
#
#   bash experiments/crosscheck/mir_cifar10.sh MIR_GIT_DIR DATA_ROOT [OUT_DIR]
#
# MIR_GIT_DIR: a clone (or bare git dir) of https://github.com/optimass/Maximally_Interfered_Retrieval holding
#              commit 35eda78 (2020-08-30, "Update ER_experiments.sh", the last commit)
# DATA_ROOT:   the folder holding cifar10/ as clzoo's data.root expects (CLZOO_DATA)
# OUT_DIR:     where the source tree, the dumped data, the per-run logs and results.txt go (default: ./mir-crosscheck)
# Run it from a clzoo checkout's Python (it builds the suite's stream with clzoo); the official code needs only
# torch, torchvision and numpy (checked with torch 2.14.1 / torchvision 0.29.1 / numpy 2.4.6, clzoo's, on CPU).
#
# Arguments: the official CIFAR-10 command of Scripts/ER_experiments.sh (lines 9-10):
#   er_main.py --method mir_replay --lr 0.1 --samples_per_task -1 --dataset split_cifar10 --subsample 50
#              --disc_iters 1 --mem_size MEM          (ER-MIR; no --compare_to_old_logits for CIFAR-10)
#   er_main.py --method rand_replay --lr 0.1 --samples_per_task -1 --dataset split_cifar10 --disc_iters 1
#              --mem_size MEM                         (ER: a uniform draw of buffer_batch_size=10 past-task samples)
# with er_main.py's defaults batch_size 10, buffer_batch_size 10, reproc 1; MEM is per class (er_main.py line 118:
# mem_size * n_classes slots): MEM 20 / 50 = M 200 / 500. --n_runs 1 per process (the paper averages 15 runs) and
# no --suffix (it only names a log file).
#
# What is changed, in the shim run_official.py below (the official files on disk are not edited; the training
# loop, mir.py, buffer.py, model.py and the evaluation run as published):
#   1. data: data.get_split_cifar10 (which downloads CIFAR-10 into ./Data and takes all 50,000 training images, 5%
#      of each task held out for validation) is replaced by a function that sets the same args fields and returns
#      the official XYDataset objects built from OUR uint8 tensors (the stream clzoo builds for the suite's cell at
#      the given seed, dumped by stage 1 below); XYDataset itself converts them as the official code does
#      (x / 255, then (x - 0.5) * 2: inputs in [-1, 1], no per-channel normalisation, no augmentation). All of our
#      1,000 training images per task are trained on (no 5% hold-out, as clzoo); the official 'valid' split, which
#      only gets printed, is the first 100 of each task's test images (kept so the evaluation loop runs unchanged);
#      the reported numbers are the official 'test' split = our 1,000 test images per task.
#   2. seed: er_main.py seeds run r with np.random.seed(r) / torch.manual_seed(r) (run = 0 .. n_runs-1; it has no
#      --seed). To run seed k alone, the shim executes er_main.py's text with those two calls offset by k
#      (run + k), which is what run k of an --n_runs k+1 job gets (checked in the smoke test). The seed fixes model
#      initialisation, the DataLoader's shuffle of each task (so the order of the batches is the official code's
#      own, NOT clzoo's order for the same seed: the same 1,000 images per task, each seen once, in another order),
#      the buffer draws (np.random.choice) and the reservoir.
#   3. after the run the shim also scores the final model (eval mode) on our test tensors exactly: er_main.py
#      averages per-batch accuracies (64-image batches, the last one shorter) and rounds each task's accuracy to
#      2 decimals; both numbers are printed.
# Results are appended to OUT_DIR/results.txt, one line per run:
#   "<method> mem<MEM>/class M=<M> seed<k>: class-IL final acc <official>% (per task [..]) exact <x>% | <s> s"
# Environment: SEEDS="0 1 2" (default), MODES="rand_replay mir_replay" (default), MEMS="50 20" (default; per
# class), SMOKE=N (keep only the first N training and test images of every class: a quick check of the plumbing),
# EXTRA_ARGS (appended to er_main.py's arguments, e.g. "--n_runs 2"), PYTHON (default python).
# One run took about 2 minutes (ER) and 4 minutes (ER-MIR) on one loaded core. The committed log of the run is
# experiments/crosscheck/mir_cifar10_results.txt. Checked with SMOKE=20: seed 1 alone gives the same accuracy matrices
# as run 1 of EXTRA_ARGS='--n_runs 2' at seed 0.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: mir_cifar10.sh MIR_GIT_DIR DATA_ROOT [OUT_DIR]"; exit 2; }
MIR_GIT=$1
[ -d "$2/cifar10" ] || { echo "no CIFAR-10 under $2: expected $2/cifar10 (clzoo's data.root)"; exit 1; }
DATA_ROOT=$(cd "$2" && pwd)
OUT=${3:-mir-crosscheck}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/../.." && pwd)
COMMIT=35eda78bcdd35025b16b0b1039a926d34aad4851
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread, as clzoo's suites (trainer.num_threads=1)

rm -rf "$OUT/src" && mkdir -p "$OUT/src" "$OUT/data" "$OUT/logs"
if [ -d "$MIR_GIT/.git" ]; then GITDIR="$MIR_GIT/.git"; else GITDIR="$MIR_GIT"; fi
git --git-dir="$GITDIR" archive "$COMMIT" | tar -x -C "$OUT/src"

# ---- stage 1: the suite's stream, built by clzoo, dumped per seed (uint8 N,3,32,32 + int64 labels per task)
SMOKE=${SMOKE:-0}
for seed in ${SEEDS:-0 1 2}; do
  # the mir and er_rand cells (every M) share one stream config, so one dump serves them all
  (cd "$REPO" && "$PYTHON" experiments/crosscheck/dump_stream.py experiments/online_cifar10.yaml mir-b500 \
     "$DATA_ROOT" "$seed" "$OUT/data/seed$seed.pt" --smoke "$SMOKE" \
     --same-stream mir-b200 mir-b1000 er_rand-b200 er_rand-b500 er_rand-b1000)
done

# ---- stage 2: the official er_main.py with the data and seed shims
cat > "$OUT/src/run_official.py" <<'EOF'
"""python run_official.py DATA_PT SEED -- <er_main.py arguments>: run the official er_main.py on our tensors."""
import sys, time, torch, numpy as np

data_pt, seed = sys.argv[1], int(sys.argv[2])
argv = sys.argv[sys.argv.index("--") + 1:]
torch.set_num_threads(1)
dump = torch.load(data_pt)
assert [t["classes"] for t in dump["tasks"]] == [[2 * k, 2 * k + 1] for k in range(5)], "not the natural class order"

import data as official_data  # the official data.py (er_main.py's `from data import *` / locate() read this module)


def get_split_cifar10(args):
    """The official get_split_cifar10's args settings, on our tensors (see the header of mir_cifar10.sh)."""
    args.n_tasks = 5
    args.n_classes = 10
    args.buffer_size = args.n_tasks * args.mem_size * 2
    args.multiple_heads = False
    args.use_conv = True
    args.n_classes_per_task = 2
    args.input_size = [3, 32, 32]
    args.input_type = 'continuous'
    if args.output_loss is None:
        args.output_loss = 'mse'
    XY = official_data.XYDataset
    train = [XY(t["x_train"], t["y_train"], source='cifar10') for t in dump["tasks"]]
    val = [XY(t["x_test"][:100], t["y_test"][:100], source='cifar10') for t in dump["tasks"]]
    test = [XY(t["x_test"], t["y_test"], source='cifar10') for t in dump["tasks"]]
    return train, val, test


official_data.get_split_cifar10 = get_split_cifar10

src = open("er_main.py").read()
for call in ("np.random.seed(run)", "torch.manual_seed(run)"):
    assert src.count(call) == 1, f"er_main.py: expected one {call} (not the 35eda78 tree?)"
    src = src.replace(call, call.replace("(run)", "(run + SEED_OFFSET)"))
sys.argv = ["er_main.py", *argv]
g = {"__name__": "__main__", "__file__": "er_main.py", "SEED_OFFSET": seed}
t0 = time.perf_counter()
exec(compile(src, "er_main.py", "exec"), g)
elapsed = time.perf_counter() - t0

args, LOG, model = g["args"], g["LOG"], g["model"]
model.eval()
correct = total = 0
with torch.no_grad():
    for t in dump["tasks"]:
        for i in range(0, len(t["y_test"]), 500):
            x = (t["x_test"][i:i + 500].float() / 255. - 0.5) * 2  # XYDataset's conversion
            correct += (model(x).argmax(1) == t["y_test"][i:i + 500]).sum().item()
            total += len(t["y_test"][i:i + 500])
for run in range(args.n_runs):
    accs = LOG[run]['test']['acc'][:, -1]
    print(f"RESULT run{run} (seed {run + seed}) official {100 * LOG[run]['test']['final_acc']:.2f} "
          f"per task [{' '.join(f'{100 * a:.0f}' for a in accs)}]")
print(f"RESULT exact (last run, seed {args.n_runs - 1 + seed}) {100 * correct / total:.2f} time {elapsed:.0f}")
EOF

for mem in ${MEMS:-50 20}; do for seed in ${SEEDS:-0 1 2}; do for mode in ${MODES:-rand_replay mir_replay}; do
  extra=(); [ "$mode" = mir_replay ] && extra=(--subsample 50)
  tag=""; [ "$SMOKE" != 0 ] && tag=" (SMOKE=$SMOKE)"
  log="$OUT/logs/${mode}_mem${mem}_seed${seed}.txt"
  (cd "$OUT/src" && "$PYTHON" run_official.py "$OUT/data/seed$seed.pt" "$seed" -- --method "$mode" --lr 0.1 \
     --samples_per_task -1 --dataset split_cifar10 --n_runs 1 "${extra[@]}" --disc_iters 1 --mem_size "$mem" \
     --result_dir "$OUT/src/Results" ${EXTRA_ARGS:-} > "$log" 2>&1) || true
  official=$(grep "^RESULT run" "$log" | sed 's/^RESULT //' | paste -sd ';' - || true)
  exact=$(grep "^RESULT exact" "$log" | sed 's/^RESULT exact //' || true)
  if [ -n "$exact" ]; then
    echo "$mode mem$mem/class M=$((mem * 10)) seed$seed$tag: class-IL final acc $official | exact $exact s" \
      | tee -a "$OUT/results.txt"
  else
    echo "$mode mem$mem/class M=$((mem * 10)) seed$seed: FAILED (see $log)" | tee -a "$OUT/results.txt"
  fi
done; done; done
