"""What a new user meets in the first hour: the summary cannot mislead (partial runs, the scenario's headline,
over budget), bad values fail in one line naming the key before any work, run folders say what happened
(cli.log, status.json), image-folder runs are named after the folder, ``--help`` speaks clzoo, plots."""
from __future__ import annotations

import json

import pytest

from clzoo.config import ConfigError, compose, config_diff, validate
from clzoo.engine import metrics as M
from clzoo.engine import run
from clzoo.engine.reporting import summary, views, write_plots
from conftest import error_line

TINY = ["stream.train_per_task=40", "stream.test_per_task=20", "log.plots=false", "log.tensorboard=false",
        "log.progress=false"]


def _results(R, R_til, scenario="class_il", n_tasks=None, **memory):
    n_tasks = n_tasks or len(R[0])
    return {"acc_matrix": R, "acc_matrix_task_il": R_til, "acc_init": [0.0] * len(R[0]),
            "acc_init_task_il": [0.0] * len(R[0]), "method": "lwf", "seed": 0,
            "stream": {"name": "s", "scenario": scenario, "n_tasks": n_tasks},
            "metrics": M.all_metrics(R, [0.0] * len(R[0])) | M.all_metrics(R_til, [0.0] * len(R[0]), "_task_il"),
            "memory": {"total_bytes": 100, "by_category": {"exemplars": 100}, "budget_bytes": None, **memory},
            "time": {"train_s": 1.0, "eval_s": 0.5}}


def _metric_row(text: str, label: str) -> list[str]:
    return next(ln for ln in text.splitlines() if ln.startswith(label)).split()[len(label.split()):]


def test_partial_run_summary_says_partial_and_averages_over_trained_tasks():
    # 2 of 4 tasks trained: columns 2 and 3 were never trained (accuracy 0 in class-IL)
    R = [[0.9, 0.0, 0.0, 0.0], [0.7, 0.8, 0.0, 0.0]]
    R_til = [[1.0, 0.5, 0.4, 0.5], [0.9, 1.0, 0.5, 0.5]]
    text = summary(_results(R, R_til, n_tasks=4))
    assert "PARTIAL RUN: 2 of 4 tasks trained" in text and "over the 2 trained tasks" in text
    # final accuracy over the trained tasks: (0.7 + 0.8) / 2 = 75.00, not (0.7 + 0.8) / 4 = 37.50
    assert _metric_row(text, "final accuracy") == ["75.00", "95.00"]
    assert "37.50" not in text
    header = next(ln for ln in text.splitlines() if ln.strip().startswith("0 ") or ln.strip() == "0      1")
    assert header.split() == ["0", "1"]  # only the trained tasks' columns


def test_headline_follows_the_scenario():
    R = [[0.9, 0.0], [0.2, 0.8]]        # task-agnostic: forgets task 0
    R_til = [[1.0, 0.5], [0.95, 0.99]]  # task id given: keeps it
    til = summary(_results(R, R_til, "task_il"))
    lines = til.splitlines()
    assert "task-IL accuracy (%)" in til and "class-IL accuracy (%)" not in til
    assert lines[lines.index(next(ln for ln in lines if "accuracy (%)" in ln)) + 3].split()[1:] == ["95.0", "99.0"]
    assert next(ln for ln in lines if "task-IL" in ln and "class-IL" in ln).split() == ["task-IL", "class-IL"]
    assert _metric_row(til, "forgetting") == ["5.00", "70.00"]
    cil = summary(_results(R, R_til, "class_il"))
    assert _metric_row(cil, "forgetting") == ["70.00", "5.00"] and "class-IL accuracy (%)" in cil
    dil = summary(_results(R, R_til, "domain_il"))
    assert "domain-IL accuracy (%)" in dil and _metric_row(dil, "forgetting") == ["70.00", "5.00"]
    assert [v[0] for v in views("task_il")] == ["task-IL", "class-IL"]


def test_over_budget_is_flagged():
    text = summary(_results([[0.5]], [[0.5]], budget_bytes=10_486, budgeted_bytes=34_016, count_model=False,
                            violations=["memory over budget after task 0: ..."]))
    assert "34,016 of 10,486 bytes" in text and "OVER BUDGET" in text and "3.24x" in text
    ok = summary(_results([[0.5]], [[0.5]], budget_bytes=50_000, budgeted_bytes=34_016, count_model=False,
                          violations=[]))
    assert "OVER BUDGET" not in ok


def test_partial_run_results_and_the_run_name_of_an_image_folder(tmp_path, digits_root):
    from PIL import Image
    import numpy as np

    folder = tmp_path / "my_flowers"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for c in ("a", "b", "c", "d"):
            (folder / split / c).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / split / c / f"{k}.png")
    cfg = compose(TINY + ["stream.dataset=imagefolder", f"stream.path={folder}", "stream.n_tasks=2",
                          f"data.root={digits_root}", "trainer.max_tasks=1"])
    assert cfg["stream"]["name"] == "my_flowers"
    results = run(cfg, tmp_path / "run", show_progress=False)
    assert results["stream"]["name"] == "my_flowers" and results["status"] == "partial"
    R = results["acc_matrix"]
    assert results["metrics_trained_tasks"]["final_acc"] == pytest.approx(R[0][0])
    assert results["metrics"]["final_acc"] == pytest.approx(sum(R[0]) / 2)
    # an explicit stream.name wins
    assert compose(["stream.dataset=imagefolder", f"stream.path={folder}", "stream.name=mine"])["stream"]["name"] == "mine"


@pytest.mark.parametrize("override,message", [
    ("trainer.epochs=abc", "trainer.epochs=abc is not an integer"),
    ("trainer.batch_size=0", "trainer.batch_size=0 must be >= 1"),
    ("trainer.optimizer.lr=fast", "trainer.optimizer.lr=fast is not a number"),
    ("budget.enforce=maybe", "budget.enforce=maybe is not true or false"),
    ("trainer.device=gpu", "trainer.device=gpu is not a device: use auto"),
    ("resume=yes", "resume=yes is not one of true, false, must"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(compose([override]))


@pytest.mark.parametrize("overrides,message", [
    # a replay batch of -3 used to replay all but three stored samples, silently
    (["method=er", "method.minibatch_size=-3"], "method.minibatch_size=-3 must be >= 1 (a count; er's default: "
                                                "minibatch_size=10)"),
    # a negative loss weight trained until the loss reached -inf
    (["method=derpp", "method.alpha=-1"], "method.alpha=-1 must be >= 0"),
    (["method=er", "+method.minibatch=5"],
     "method.minibatch is not an argument of er; it takes buffer, minibatch_size"),
    (["method=er", "method.minibatch_size=abc"], "method.minibatch_size=abc is not an integer"),
    (["method=er", "method.minibatch_size=2.5"], "method.minibatch_size=2.5 is not an integer"),
    (["method=er", "method.minibatch_size=null"], "method.minibatch_size=null is not allowed"),
    (["method=onpro", "method.mixup_p=1.5"], "method.mixup_p=1.5 must be in [0, 1]"),
    (["method=lwf", "method.temperature=0"], "method.temperature=0 must be > 0"),
    (["method=bic", "method.validation_fraction=1"], "method.validation_fraction=1 must be in [0, 1)"),
    (["method=mir", "method.stored_logits=maybe"], "method.stored_logits=maybe is not true or false"),
])
def test_bad_method_arguments_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate(compose(overrides))


def test_every_methods_defaults_and_nullable_arguments_pass_the_method_checks():
    from clzoo.methods.registry import available_methods

    for name in available_methods():
        validate(compose([f"method={name}"]), here=False)
    validate(compose(["method=lwf", "method.warmup_epochs=null", "method.alpha=0"]), here=False)


class PlainPlugin:
    """A plugin method without annotations (as docs/plugins.md's example): its common names still carry ranges."""

    def __init__(self, model, ctx, buffer=200, minibatch_size=10, smoothing=0.1):
        pass


def test_a_plugins_unannotated_arguments_are_range_checked_by_name():
    from clzoo.config import check_method_arguments

    target = f"{__name__}.PlainPlugin"
    check_method_arguments({"method": {"_target_": target, "minibatch_size": 4, "smoothing": "any"}})
    with pytest.raises(ConfigError, match=r"method.minibatch_size=0 must be >= 1 \(a count; PlainPlugin's default"):
        check_method_arguments({"method": {"_target_": target, "minibatch_size": 0}})
    with pytest.raises(ConfigError, match="method.smooth is not an argument of PlainPlugin; it takes buffer, "
                                          "minibatch_size, smoothing"):
        check_method_arguments({"method": {"_target_": target, "smooth": 0.2}})


def test_cuda_without_a_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"trainer.device=cuda but .*use trainer.device=cpu"):
        validate(compose(["trainer.device=cuda"]))


def test_config_diff_names_changed_keys():
    old, new = compose(["seed=0"]), compose(["seed=1", "trainer.optimizer.lr=0.2", "trainer.device=cpu"])
    assert config_diff(old, new, ignore=("trainer.device",)) == ["seed: 0 -> 1", "trainer.optimizer.lr: 0.1 -> 0.2"]


def test_refused_resume_lists_the_changed_keys(tmp_path, digits_root):
    from clzoo.engine.runner import ResumeError

    base = TINY + [f"data.root={digits_root}", "trainer.max_tasks=1"]
    run(compose(base), tmp_path / "r", show_progress=False)
    with pytest.raises(ResumeError, match=r"changed: method.minibatch_size: 10 -> 5; seed: 0 -> 2"):
        run(compose(base + ["seed=2", "method.minibatch_size=5", "resume=true"]), tmp_path / "r", show_progress=False)


def test_failed_run_folder_says_why_and_the_log_holds_the_output(cli, tmp_path, digits_root):
    bad = tmp_path / "bad"
    proc = cli("model=vit", f"data.root={digits_root}", f"hydra.run.dir={bad}")
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert "model=vit cannot take split_digits's 1x8x8 inputs" in line and "model=mlp" in line
    status = json.loads((bad / "status.json").read_text())
    assert status["status"] == "failed" and "model=vit" in status["error"]
    assert line in (bad / "cli.log").read_text()
    assert not (bad / "checkpoints").exists()  # nothing was trained

    good = tmp_path / "good"
    proc = cli(*TINY, "trainer.max_tasks=2", "resume=true", f"data.root={digits_root}", f"hydra.run.dir={good}")
    assert proc.returncode == 0, proc.stderr
    assert "resume=true: " in proc.stdout and "starting from task 0" in proc.stdout
    log = (good / "cli.log").read_text()
    assert "task 1: avg acc" in log and "PARTIAL RUN: 2 of 5 tasks trained" in log and "final accuracy" in log
    assert json.loads((good / "status.json").read_text())["status"] == "partial"



def test_resume_must_fails_without_a_checkpoint(tmp_path, capsys):
    from clzoo.cli import check_resume

    folder = tmp_path / "new"
    (folder / ".hydra").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"resume=must but .*new is a new, empty run folder"):
        check_resume({"resume": "must"}, folder)
    cfg = {"resume": True}
    check_resume(cfg, folder)
    assert cfg["resume"] is True and "starting from task 0" in capsys.readouterr().out


def test_help_lists_every_option_with_a_description(cli):
    from clzoo.help import CONF, GROUPS, first_comment

    proc = cli("--help", quiet=False)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "powered by Hydra" not in text and "\nbase=" not in text  # base/ only holds the streams' defaults
    for group in GROUPS:
        for yaml in (CONF / group).glob("*.yaml"):
            assert first_comment(yaml), f"{yaml} needs a first comment line: clzoo-run --help shows it"
            assert f"    {yaml.stem} " in text, yaml
    for key in ("trainer.max_tasks=null", "stream.train_per_task=null", "log.progress=true", "budget.mb=null",
                "outputs/<stream>/<method>/seed<k>_<time>/"):
        assert key in text, key


def test_plots_number_tasks_from_zero_and_include_a_task_il_heatmap(tmp_path):
    R = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.6, 0.9]]
    paths = write_plots(tmp_path, R, R, "er on split_digits", "task_il")
    assert [p.name for p in paths] == ["accuracy_curve.png", "acc_matrix.png", "acc_matrix_task_il.png",
                                       "forgetting.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_progress_lines_report_rate_and_eta():
    from clzoo.engine.reporting import ProgressLines

    printed = []
    lines = ProgressLines(3, epochs=2, total_steps=100, every_s=0.0, echo=lambda text, **_: printed.append(text))
    lines.started -= 10.0  # as if 10 s had passed
    assert lines.update(25, 250, 0, 0.5)
    assert printed[0].startswith("task 3: epoch 1/2, step 25/100 (25%), loss 0.500, ")
    rate = float(printed[0].split(", ")[-2].split()[0])
    eta = printed[0].rsplit("ETA ", 1)[1]
    assert 23 <= rate <= 25 and eta in ("30s", "31s")  # 250 samples in ~10 s; 75 steps left at 2.5 steps/s
    quiet = ProgressLines(0, 1, 10, every_s=3600, echo=printed.append)
    assert not quiet.update(5, 50, 0, 1.0) and len(printed) == 1
