#!/usr/bin/env bash
# Cross-check: run the DER paper's own code (mammoth as published in 2020, aimagelab/mammoth@5dc82be) with ER and
# DER++ on the data and protocol of experiments/online_cifar10.yaml (the suite's fixed 500 training images per
# class, 1,000 test images per task, 5 tasks of 2 classes in the natural order, one pass in batches of 10, replay
# batch 10, reduced ResNet-18 with nf 20, no augmentation), with the seeds we use, and print the class-IL accuracy
# it gives; the suite's er / derpp / derpp_online_args cells are compared with it
# (log: experiments/crosscheck/derpp_online_cifar10_results.txt).
#
#   bash experiments/crosscheck/derpp_online_cifar10.sh MAMMOTH_GIT_DIR DATA_ROOT [OUT_DIR]
#
# MAMMOTH_GIT_DIR: a clone (or bare git dir) of https://github.com/aimagelab/mammoth holding commit 5dc82be
#                  (2020-11-19, the code of the DER paper's tables; see mammoth2020.sh)
# DATA_ROOT:       the folder holding cifar10/ as clzoo's data.root expects (CLZOO_DATA)
# OUT_DIR:         where the source tree, the dumped data, the per-run logs and results.txt go
#                  (default: ./derpp-online-crosscheck)
# Run it from a clzoo checkout's Python (it builds the suite's stream with clzoo); mammoth needs torch,
# torchvision, numpy, Pillow and quadprog (it imports GEM at start-up).
#
# Runs (utils/main.py, its explicit-argument path; --n_epochs 1 --batch_size 10 --minibatch_size 10, as the
# suite's cells and mammoth issue #6's online grid):
#   er     --lr 0.1                                the suite's er cell
#   derpp  --lr 0.1  --alpha 0.2 --beta 0.5        the suite's derpp cell (the DER paper's CIFAR-10 alpha / beta)
#   derpp  --lr 0.01 --alpha 0.1 --beta 0.5        the suite's derpp_online_args cell (issue #6's winner at M = 1,000)
# at --buffer_size M for M in MEMS (default "500 200 1000").
#
# What is changed, in the shim run_official.py below (no official file is edited; mammoth's models, buffer,
# backbone, training loop and evaluation run as published):
#   1. data: a dataset 'seq-cifar10-ours' is added to mammoth's registry (datasets.NAMES), a subclass of its
#      SequentialCIFAR10 whose get_data_loaders builds MyCIFAR10-like items (a PIL image through the transform, and
#      its ToTensor copy for the buffer) from OUR uint8 tensors (the stream clzoo builds for the suite's cell at
#      the seed, dumped by dump_stream.py) and hands them to mammoth's own store_masked_loaders (its class masks,
#      its shuffled DataLoader of batch_size). Its transform is SequentialCIFAR10's without the augmentation
#      (ToTensor + the same per-channel Normalize, which is clzoo's too), since the suite has none; the buffer's
#      transform is SequentialCIFAR10.get_transform's (ToPILImage, then that transform).
#   2. backbone: mammoth's own resnet18 with nf=20 (its default 64 is the DER paper's network; the suite and the
#      MIR protocol use the reduced one).
#   3. mammoth's evaluate() is wrapped to keep its last per-task class-IL accuracies, printed after the run.
# The order of the batches is mammoth's own (its DataLoader's shuffle under --seed), not clzoo's for that seed.
# Results are appended to OUT_DIR/results.txt, one line per run:
#   "<cell> M=<M> seed<k>: class-IL <acc>% task-IL <acc>% (per task class-IL [..]) | <s> s"
# Environment: SEEDS="0 1 2" (default), MEMS="500 200 1000" (default), RUNS="er derpp derpp_online_args"
# (default), SMOKE=N (keep only the first N training and test images of every class: a quick check of the
# plumbing), PYTHON (default python).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: derpp_online_cifar10.sh MAMMOTH_GIT_DIR DATA_ROOT [OUT_DIR]"; exit 2; }
MAMMOTH_GIT=$1
[ -d "$2/cifar10" ] || { echo "no CIFAR-10 under $2: expected $2/cifar10 (clzoo's data.root)"; exit 1; }
DATA_ROOT=$(cd "$2" && pwd)
OUT=${3:-derpp-online-crosscheck}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/../.." && pwd)
COMMIT=5dc82be92fefc31e0e0a6b85e4db42ded75d141f
PYTHON=${PYTHON:-python}
SMOKE=${SMOKE:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread, as clzoo's suites (trainer.num_threads=1)

rm -rf "$OUT/src" && mkdir -p "$OUT/src" "$OUT/data" "$OUT/logs"
if [ -d "$MAMMOTH_GIT/.git" ]; then GITDIR="$MAMMOTH_GIT/.git"; else GITDIR="$MAMMOTH_GIT"; fi
git --git-dir="$GITDIR" archive "$COMMIT" | tar -x -C "$OUT/src"

# ---- stage 1: the suite's stream, built by clzoo, dumped per seed (one dump serves every cell: one stream config)
for seed in ${SEEDS:-0 1 2}; do
  (cd "$REPO" && "$PYTHON" experiments/crosscheck/dump_stream.py experiments/online_cifar10.yaml derpp-b500 \
     "$DATA_ROOT" "$seed" "$OUT/data/seed$seed.pt" --smoke "$SMOKE" \
     --same-stream er-b200 er-b500 er-b1000 derpp-b200 derpp-b1000 \
                   derpp_online_args-b200 derpp_online_args-b500 derpp_online_args-b1000)
done

# ---- stage 2: mammoth's utils/main.py with the data shim
cat > "$OUT/src/run_official.py" <<'EOF'
"""python run_official.py DATA_PT -- <utils/main.py arguments>: mammoth (5dc82be) on our tensors."""
import sys, time
import torch
import torchvision.transforms as transforms
from PIL import Image

data_pt = sys.argv[1]
argv = sys.argv[sys.argv.index("--") + 1:]
torch.set_num_threads(1)
dump = torch.load(data_pt)
assert [t["classes"] for t in dump["tasks"]] == [[2 * k, 2 * k + 1] for k in range(5)], "not the natural class order"

import datasets
import utils.training as training
from backbone.ResNet18 import resnet18
from datasets.seq_cifar10 import SequentialCIFAR10
from datasets.utils.continual_dataset import store_masked_loaders


class TensorCIFAR10(torch.utils.data.Dataset):
    """MyCIFAR10's items (train: image through the transform, target, its ToTensor copy; test: image, target)
    from uint8 (N, 3, 32, 32) tensors; ``data`` / ``targets`` as torchvision's CIFAR10 holds them (NHWC uint8,
    labels), which store_masked_loaders masks."""

    def __init__(self, x, y, transform, train):
        self.data = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = y.tolist()
        self.transform, self.train = transform, train
        self.not_aug_transform = transforms.Compose([transforms.ToTensor()])

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        img, target = Image.fromarray(self.data[index], mode="RGB"), self.targets[index]
        if not self.train:
            return self.transform(img), target
        return self.transform(img), target, self.not_aug_transform(img.copy())


class SequentialCIFAR10Ours(SequentialCIFAR10):
    NAME = "seq-cifar10-ours"
    # SequentialCIFAR10.TRANSFORM without RandomCrop / RandomHorizontalFlip: the suite has no augmentation
    TRANSFORM = transforms.Compose([transforms.ToTensor(), SequentialCIFAR10.get_normalization_transform()])

    def get_data_loaders(self):
        cat = lambda key: torch.cat([t[key] for t in dump["tasks"]])
        train = TensorCIFAR10(cat("x_train"), cat("y_train"), self.TRANSFORM, True)
        test = TensorCIFAR10(cat("x_test"), cat("y_test"), self.TRANSFORM, False)
        return store_masked_loaders(train, test, self)

    @staticmethod
    def get_transform():
        return transforms.Compose([transforms.ToPILImage(), SequentialCIFAR10Ours.TRANSFORM])

    @staticmethod
    def get_backbone():
        return resnet18(SequentialCIFAR10.N_CLASSES_PER_TASK * SequentialCIFAR10.N_TASKS, nf=20)


datasets.NAMES[SequentialCIFAR10Ours.NAME] = SequentialCIFAR10Ours  # the dict utils/args.py and main.py read
kept = {}
evaluate = training.evaluate


def keep_last(model, dataset, last=False):
    """mammoth's evaluate; the accuracies of its every-task evaluations are kept (the last one is printed)."""
    accs = evaluate(model, dataset, last=last)
    if not last:
        kept["accs"] = accs
    return accs


training.evaluate = keep_last
from utils.main import main

sys.argv = ["utils/main.py", *argv]
t0 = time.perf_counter()
main()
elapsed = time.perf_counter() - t0
class_il, task_il = kept["accs"]
print(f"RESULT class-IL {sum(class_il) / len(class_il):.2f}% task-IL {sum(task_il) / len(task_il):.2f}% "
      f"(per task class-IL [{' '.join(f'{a:.1f}' for a in class_il)}]) | {elapsed:.0f} s")
EOF

args_of() {  # the mammoth arguments of a suite cell
  case $1 in
    er) echo "--model er --lr 0.1" ;;
    derpp) echo "--model derpp --lr 0.1 --alpha 0.2 --beta 0.5" ;;
    derpp_online_args) echo "--model derpp --lr 0.01 --alpha 0.1 --beta 0.5" ;;
    *) echo "unknown run $1" >&2; exit 2 ;;
  esac
}
tag=""; [ "$SMOKE" != 0 ] && tag=" (SMOKE=$SMOKE)"
for mem in ${MEMS:-500 200 1000}; do for seed in ${SEEDS:-0 1 2}; do for cell in ${RUNS:-er derpp derpp_online_args}; do
  log="$OUT/logs/${cell}_M${mem}_seed${seed}.txt"
  # shellcheck disable=SC2046
  (cd "$OUT/src" && PYTHONPATH=. "$PYTHON" run_official.py "$OUT/data/seed$seed.pt" -- $(args_of "$cell") \
     --dataset seq-cifar10-ours --n_epochs 1 --batch_size 10 --minibatch_size 10 --buffer_size "$mem" \
     --seed "$seed" > "$log" 2>&1) || true
  result=$(grep "^RESULT " "$log" | sed 's/^RESULT //' || true)
  echo "$cell M=$mem seed$seed$tag: ${result:-FAILED (see $log)}" | tee -a "$OUT/results.txt"
done; done; done
