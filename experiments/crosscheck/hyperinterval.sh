#!/usr/bin/env bash
# Cross-check: run HyperInterval's own code (pkrukowski1/HyperInterval@50bd82d, built on hypnettorch) at the CPU
# scale of experiments/hypernet_mnist.yaml (and hypernet_pmnist.yaml), with the seeds we use, and print what it
# gives; the leaderboard's hyperinterval / hyperinterval_universal cells are compared with it (their notes cite
# the committed log, experiments/crosscheck/hyperinterval_results.txt).
#
#   bash experiments/crosscheck/hyperinterval.sh HYPERINTERVAL_GIT_DIR DATA_ROOT [OUT_DIR]
#
# HYPERINTERVAL_GIT_DIR: a clone of https://github.com/pkrukowski1/HyperInterval holding commit 50bd82d
# DATA_ROOT:             the folder holding MNIST/raw/ in torchvision's layout (what clzoo's data.root points at);
#                        the four *-ubyte.gz files there are what hypnettorch reads (it is never asked to download)
# OUT_DIR:               where the source tree, the runs' folders and the log go (default: ./hyperinterval-crosscheck)
#
# Needs (a separate virtual environment is best): torch, torchvision, hypnettorch==0.0.4 (the version the official
# environment.yml pins), pandas<2 (the code calls DataFrame.append), numpy<1.24 (hypnettorch and the code use
# np.int / np.bool), and, to go with that numpy, scipy<1.12, matplotlib<3.8, contourpy<1.2, scikit-image<0.22,
# scikit-learn<1.4, seaborn. Checked with torch 2.14.1 / torchvision 0.29.1 (clzoo's), pandas 1.5.3, numpy 1.23.5.
# Results are appended to OUT_DIR/results.txt, one line per run:
#   "<stream> <mode> seed<k>: task-IL after the last task, per-task embeddings [acc per task] mean M[; universal ..]"
# mode: per_task (Training/train_non_forced_classification_scenario.py, one embedding per task, task id given) or
# universal (Training/train_nested_classification_scenario.py, nested embeddings; the line reports both the
# per-task embeddings and the universal embedding = centre of the intersection of the tasks' boxes).
# Environment: SEEDS="0 1 2" (default), MODES="per_task universal" (default), STREAMS="split_mnist" (default;
# "split_mnist perm_mnist" adds the P-MNIST table), JOBS=1 (runs in parallel). One run took 1.5 to 2.6 minutes
# (Split MNIST) and 2.2 to 4.7 minutes (P-MNIST) on a shared, loaded core.
#
# Settings: the official Split-MNIST defaults (Utils/prepare_non_forced_scenario_params.py and
# Utils/prepare_nested_scenario_params.py, single-run blocks), with the changes that make them the suite's CPU scale;
# they are applied by wrapping set_hyperparameters (see run_one.py below), not by editing the official files:
#   embedding 24, hypernetwork hidden [25, 25], target MLP 784-100-100-2, batch 128, Adam lr 0.001,
#   one epoch per task (number_of_epochs=1: ceil(n_task / 128) iterations, 88 to 99, exactly clzoo's steps),
#   no augmentation, no validation split (clzoo trains on every training image) and the last model kept
#   (clzoo has no best-iteration selection); per-task beta 0.01, epsilon 1; universal beta 0.001, epsilon 10.
#   Everything else stays official: kappa_min 0.5 and the warm-up, custom_init=True in nested mode (each task's
#   embedding starts from the previous task's), the regularisers (middle weights only for per-task embeddings,
#   lower / middle / upper in nested mode) and their double division by the task count, fixed perturbation
#   vectors in nested mode, learnt ones per task otherwise.
# P-MNIST (STREAMS=perm_mnist): 10 permutations of 784 pixels (no padding), 6,400 training and 1,000 test images
#   per task (the same seeded subset for every task: hypnettorch permutes one shared MNIST object), target MLP
#   784-100-100-10, beta 0.005, epsilon 0.1 in both modes (the suite's values; the official nested epsilon is 5).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: hyperinterval.sh HYPERINTERVAL_GIT_DIR DATA_ROOT [OUT_DIR]"; exit 2; }
HI_GIT=$1
[ -f "$2/MNIST/raw/train-images-idx3-ubyte.gz" ] || {
  echo "no MNIST under $2: expected $2/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (torchvision's layout)"; exit 1; }
DATA_ROOT=$(cd "$2" && pwd)
OUT=${3:-hyperinterval-crosscheck}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
COMMIT=50bd82d

rm -rf "$OUT/src" && mkdir -p "$OUT/src/Data/MNIST"
git -C "$HI_GIT" archive "$COMMIT" | tar -x -C "$OUT/src"
# hypnettorch reads ./Data/MNIST/*-ubyte.gz and writes its pickle dump beside them: link the files, not the folder
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  ln -sfn "$DATA_ROOT/MNIST/raw/$f.gz" "$OUT/src/Data/MNIST/$f.gz"
done

python3 - "$OUT/src" <<'EOF'
# The only edits to the official tree; each asserts that it finds the 50bd82d text it replaces.
import sys, pathlib
root = pathlib.Path(sys.argv[1])

def patch(rel, old, new, count=1):
    path = root / rel
    src = path.read_text()
    assert src.count(old) == count, f"{rel}: expected {count} x {old!r} (not the 50bd82d tree?)"
    path.write_text(src.replace(old, new))

for trainer in ("Training/train_non_forced_classification_scenario.py", "Training/train_nested_classification_scenario.py"):
    # 1. __main__ hard-codes the dataset (CUB200 / TinyImageNet) and a grid search: take the one run_one.py names
    #    (SplitMNIST or PermutedMNIST), single run (whose settings run_one.py then sets to the suite's)
    src = (root / trainer).read_text()
    old_ds = next(l for l in src.splitlines() if l.strip().startswith('dataset = "'))
    patch(trainer, old_ds, '    dataset = os.environ["HI_DATASET"]')
    patch(trainer, "create_grid_search = True", "create_grid_search = False")
    # 2. the progress check every 10 iterations scores the validation split; we train on all training images
    #    (no validation split) and keep the last model, so skip it when there is no validation split (it only
    #    prints and picks the best iteration, which last_model does not use)
    patch(trainer, "        if condition:\n", "        if condition and current_dataset_instance.num_val_samples > 0:\n")
# 3. a hard-coded .to("cuda") in the per-task trainer (the nested one has none): use the configured device
patch("Training/train_non_forced_classification_scenario.py", 'torch.Tensor(tensor_output).to("cuda")',
      'torch.Tensor(tensor_output).to(parameters["device"])')
# 4. interval layers label their [N, bounds, features] tensors with named-tensor names (refine_names / rename /
#    unbind("bounds")), a prototype feature that recent torch no longer has; the names are annotations only (every
#    tensor stacks its lower / middle / upper bounds on dim 1), so drop them and unbind dim 1: same numbers
import re
rel = "IntervalNets/interval_modules.py"
src = (root / rel).read_text()
assert src.count(".refine_names(") == 13 and src.count('.unbind("bounds")') == 8, f"{rel}: not the 50bd82d text"
src = re.sub(r'\.refine_names\("N", "bounds", [^)]*\)', "", src).replace(".rename(None)", "")
src = src.replace('.unbind("bounds")', ".unbind(1)")
assert "refine_names(" not in src and "rename(" not in src and 'unbind("' not in src, f"{rel}: names left"
(root / rel).write_text(src)
print("patched", root)
EOF

cat > "$OUT/src/run_one.py" <<'EOF'
"""Run one official trainer's __main__ at a suite's CPU scale: python run_one.py split_mnist|perm_mnist MODE SEED."""
import glob, os, runpy, sys
import numpy as np, pandas as pd

stream, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
module = {"per_task": "non_forced", "universal": "nested"}[mode]
saving = f"./Results/{stream}_{mode}_seed{seed}/"
overrides = {  # official single-run values -> the suite's (experiments/hypernet_mnist.yaml, hypernet_pmnist.yaml)
    "seed": [seed], "embedding_sizes": [24], "hypernetworks_hidden_layers": [[25, 25]],
    "target_hidden_layers": [100, 100], "learning_rates": [0.001], "batch_sizes": [128],
    "number_of_epochs": 1, "number_of_iterations": None, "augmentation": False,
    "no_of_validation_samples": 0, "best_model_selection_method": "last_model", "saving_folder": saving,
}
if stream == "split_mnist":
    overrides.update({"betas": [0.01] if mode == "per_task" else [0.001],
                      "perturbated_epsilon": [1.0] if mode == "per_task" else [10.0]})
else:  # the suite's P-MNIST: 784 inputs (no padding), an MLP target, beta 0.005, epsilon 0.1, 10 tasks (the
    # official per-task P-MNIST block is a LeNet / RMSprop / 1000-task debug setting: replaced here too)
    overrides.update({"betas": [0.005], "perturbated_epsilon": [0.1], "padding": 0, "shape": 28 * 28,
                      "number_of_tasks": 10, "target_network": "MLP", "full_interval": True, "optimizer": "adam",
                      "use_batch_norm": False, "use_chunks": False, "dropout_rate": [-1]})
dataset = os.environ["HI_DATASET"] = {"split_mnist": "SplitMNIST", "perm_mnist": "PermutedMNIST"}[stream]
params_module = __import__(f"Utils.prepare_{module}_scenario_params", fromlist=["set_hyperparameters"])
official = params_module.set_hyperparameters

def set_hyperparameters(name, grid_search=False):
    hp = official(name, grid_search=grid_search)
    assert name == dataset and not grid_search
    hp.update(overrides)
    os.makedirs(hp["saving_folder"], exist_ok=True)
    print("settings:", {k: v for k, v in sorted(hp.items()) if k != "activation_function"}, flush=True)
    return hp

params_module.set_hyperparameters = set_hyperparameters  # the trainer's `from ... import` picks this up
if stream == "perm_mnist":
    # the suite's 6,400 training and 1,000 test images per task: hypnettorch permutes one shared MNIST object, so
    # every task gets the same subset (clzoo draws one per task), drawn with a fixed seed as clzoo's are
    import Utils.dataset_utils as dataset_utils
    official_pmnist = dataset_utils.prepare_permuted_mnist_tasks

    def prepare_permuted_mnist_tasks(*args, **kwargs):
        tasks = official_pmnist(*args, **kwargs)
        data, rng = tasks._data._data, np.random.RandomState(0)
        data["train_inds"] = np.sort(rng.permutation(data["train_inds"])[:6400])
        data["test_inds"] = np.sort(rng.permutation(data["test_inds"])[:1000])
        return tasks

    dataset_utils.prepare_permuted_mnist_tasks = prepare_permuted_mnist_tasks  # read by the trainer's `import *`
runpy.run_path(f"Training/train_{module}_classification_scenario.py", run_name="__main__")

def last_row(csv):
    df = pd.read_csv(csv, sep=";")
    last = df[df.after_learning_of_task == df.after_learning_of_task.max()].sort_values("tested_task")
    acc = last.accuracy.to_numpy()
    return "[" + " ".join(f"{a:.2f}" for a in acc) + f"] mean {np.mean(acc):.2f}"

run_dir = sorted(glob.glob(f"{saving}*/0/"))[-1]
line = f"{stream} {mode} seed{seed}: task-IL after the last task, per-task embeddings {last_row(run_dir + 'results.csv')}"
if mode == "universal":
    line += f"; universal embedding {last_row(run_dir + 'results_intersection.csv')}"
print("RESULT " + line)
EOF

run() {  # run STREAM MODE SEED
  local stream=$1 mode=$2 seed=$3 line log="$OUT/log_$1_$2_seed$3.txt"
  line=$(cd "$OUT/src" && MPLBACKEND=Agg python run_one.py "$stream" "$mode" "$seed" > "$log" 2>&1; grep "^RESULT " "$log" | tail -1)
  echo "${line#RESULT }" | grep -q . && echo "${line#RESULT }" | tee -a "$OUT/results.txt" \
    || echo "$stream $mode seed$seed: FAILED (see $log)" | tee -a "$OUT/results.txt"
}
export -f run; export OUT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per run, as clzoo's suites (trainer.num_threads=1)

for stream in ${STREAMS:-split_mnist}; do for seed in ${SEEDS:-0 1 2}; do for mode in ${MODES:-per_task universal}; do
  echo "$stream $mode $seed"; done; done; done \
  | xargs -P "${JOBS:-1}" -L 1 bash -c 'run "$@"' _
