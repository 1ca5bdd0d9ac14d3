"""The GPU-ready engine (clzoo/engine/acceleration.py, issue 18): trainer.amp / compile / channels_last /
cudnn_benchmark, off by default and recorded; no host read per training step; the replay buffer on the training
device. The CUDA tests run where a GPU is present and skip otherwise; the CPU tests check the same code paths
(and that the device-side reservoir gives the host path's results to the bit)."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

from clzoo.config import ConfigError, compose, validate
from clzoo.data.augment import BatchTransform
from clzoo.engine import acceleration, run, runner
from clzoo.engine.checkpoint import config_hash, latest_checkpoint, load_checkpoint
from clzoo.memory.buffer import ReplayBuffer
from conftest import QUIET

TINY = QUIET + ["stream=split_digits", "trainer.max_tasks=2", "log.plots=false", "log.tensorboard=false"]
OPTIONS = {"amp": "none", "compile": False, "channels_last": False, "cudnn_benchmark": False}
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (the CPU tests cover the same code paths)")


def run_tiny(tmp_path, *overrides, name="run", observer=None):
    """A 2-task split_digits run, on the CPU unless ``overrides`` name a device (``auto`` would take a GPU)."""
    device = [] if any(o.startswith("trainer.device=") for o in overrides) else ["trainer.device=cpu"]
    return run(compose(TINY + device + list(overrides)), tmp_path / name, show_progress=False, observer=observer)


def final_weights(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))["method"]


# ------------------------------------------------------------------------------------------ options
def test_options_are_off_by_default_and_leave_hashes_unchanged():
    cfg = compose([])
    assert {k: cfg["trainer"][k] for k in OPTIONS} == OPTIONS
    without = json.loads(json.dumps(cfg))
    for key in OPTIONS:
        del without["trainer"][key]
    assert config_hash(cfg) == config_hash(without)  # committed runs keep their hash
    assert config_hash(compose(["trainer.amp=bf16"])) != config_hash(cfg)  # a changed setting is a new config


@pytest.mark.parametrize("override,message", [
    ("trainer.amp=fp32", r"^trainer.amp=fp32 is not a precision: use none .*, bf16 .* or fp16 "),
    ("trainer.compile=maybe", r"^trainer.compile=maybe is not true or false$"),
    ("trainer.channels_last=2", r"^trainer.channels_last=2 is not true or false$"),
    ("trainer.cudnn_benchmark=yes", r"^trainer.cudnn_benchmark=yes is not true or false$"),
])
def test_bad_values_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose([override]))


def test_fp16_needs_cuda():
    with pytest.raises(ConfigError, match=r"^trainer.amp=fp16 needs a CUDA device .*use trainer.amp=bf16"):
        validate(compose(["trainer.amp=fp16", "trainer.device=cpu"]))


def test_device_cuda_without_a_gpu_is_one_line():
    if CUDA:
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"^trainer.device=cuda but .*; use trainer.device=cpu"):
        validate(compose(["trainer.device=cuda"]))


# ------------------------------------------------------------------------------------------ amp, layout, compile
def test_bf16_autocast_runs_on_cpu_and_is_recorded(tmp_path):
    dtypes = set()

    def observe(method, task_id):
        if task_id is None:
            method.model.head.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))

    results = run_tiny(tmp_path, "method=der", "trainer.amp=bf16", "trainer.max_tasks=1", observer=observe)
    assert dtypes == {torch.bfloat16}  # every forward (training and evaluation) ran under autocast
    assert results["execution"] == {**results["execution"], **OPTIONS, "amp": "bf16", "device": "cpu"}
    assert torch.isfinite(torch.tensor(results["acc_matrix"])).all()
    assert not torch.is_autocast_enabled("cpu")  # restored when the run ended


def test_channels_last_conv_net(tmp_path):
    seen = {}

    def observe(method, task_id):
        if task_id is None:
            convs = [p for p in method.parameters() if p.dim() == 4]
            seen["weights"] = all(conv.is_contiguous(memory_format=torch.channels_last) for conv in convs)
            seen["input"] = method.ctx.train_transform.channels_last and method.ctx.eval_transform.channels_last

    results = run_tiny(tmp_path, "method=er", "model=reduced_resnet18", "model.nf=8", "trainer.max_tasks=1",
                       "trainer.channels_last=true", observer=observe)
    assert seen == {"weights": True, "input": True} and results["execution"]["channels_last"] is True
    # narrower convolutions stay NCHW on a CPU (torch's channels-last backward corrupts memory there): said, recorded
    seen.clear()
    narrow = run_tiny(tmp_path, "method=er", "model=reduced_resnet18", "model.nf=4", "trainer.max_tasks=1",
                      "trainer.channels_last=true", name="narrow", observer=observe)
    assert seen == {"weights": False, "input": False} and narrow["execution"]["channels_last"] is False
    # an MLP has nothing to convert: recorded as not in effect
    mlp = run_tiny(tmp_path, "trainer.channels_last=true", "trainer.max_tasks=1", name="mlp")
    assert mlp["execution"]["channels_last"] is False


def test_channels_last_computes_the_same_forward():
    from clzoo.models import ContinualModel, reduced_resnet18

    torch.manual_seed(0)
    model = ContinualModel(reduced_resnet18((3, 16, 16), nf=4), 10).eval()
    transform = BatchTransform([0.5] * 3, [0.25] * 3)
    x = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    expected = model(transform(x))
    transform.channels_last = True
    model.to(memory_format=torch.channels_last)
    assert transform(x).is_contiguous(memory_format=torch.channels_last) and not transform(x).is_contiguous()
    assert transform.without_augmentation().channels_last
    assert torch.allclose(model(transform(x)), expected, atol=1e-5)


def test_eval_batch_size_auto_is_the_devices_and_changes_no_result(tmp_path):
    assert compose([])["trainer"]["eval_batch_size"] == "auto"
    assert acceleration.eval_batch_size({"eval_batch_size": "auto"}, torch.device("cpu")) == acceleration.EVAL_BATCH_CPU
    assert acceleration.eval_batch_size({}, torch.device("cuda")) == acceleration.EVAL_BATCH_ACCELERATOR
    assert acceleration.eval_batch_size({"eval_batch_size": 64}, torch.device("cuda")) == 64
    auto = run_tiny(tmp_path, "method=er", "trainer.anytime_every=200", name="auto")
    odd = run_tiny(tmp_path, "method=er", "trainer.anytime_every=200", "trainer.eval_batch_size=7", name="odd")
    assert auto["execution"]["eval_batch_size"] == acceleration.EVAL_BATCH_CPU and odd["execution"]["eval_batch_size"] == 7
    assert auto["acc_matrix"] == odd["acc_matrix"] and auto["acc_matrix_task_il"] == odd["acc_matrix_task_il"]
    assert auto["anytime"] == odd["anytime"] and auto["config_hash"] == odd["config_hash"]


@pytest.mark.parametrize("value", ["big", 0])
def test_eval_batch_size_is_a_number_or_auto(value):
    with pytest.raises(ConfigError, match=rf"^trainer.eval_batch_size={value} (is not an integer|must be >= 1)"):
        validate(compose([f"trainer.eval_batch_size={value}"]))


def test_compile_keeps_state_keys_and_results(tmp_path, monkeypatch):
    # the eager backend runs TorchDynamo's capture without code generation: inductor needs ~50 s for a tiny MLP
    # on a small CPU (test_compile_inductor_on_cuda runs it where there is a GPU)
    monkeypatch.setattr(acceleration, "COMPILE_OPTIONS", {"backend": "eager"})
    compiled = {}

    def observe(method, task_id):
        compiled[task_id] = "_compiled_call_impl" in method.model.backbone.__dict__

    plain = run_tiny(tmp_path, "method=er", name="plain")
    fast = run_tiny(tmp_path, "method=er", "trainer.compile=true", name="compiled", observer=observe)
    assert compiled == {None: True, 0: True, 1: True} and fast["execution"]["compile"] is True
    assert fast["acc_matrix"] == plain["acc_matrix"]
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "compiled")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same keys: checkpoints load


# ------------------------------------------------------------------------------------------ host reads per step
#: tensor calls that make the host wait for the device on an accelerator (a read of a value, or an output whose
#: size depends on values)
HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero",
              "argwhere", "masked_select", "unique", "__format__"}


class HostReads(TorchFunctionMode):
    """Counts host reads of tensor values, except of tensors that live on the host by design (``exempt``)."""

    def __init__(self, exempt=()):
        super().__init__()
        self.exempt, self.calls = {id(t) for t in exempt}, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        indexes = args[1:2] if name in ("__getitem__", "__setitem__") else ()
        bool_index = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indexes)
        if (name in HOST_READS or bool_index) and not (args and id(args[0]) in self.exempt):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["er", "der", "derpp"])
def test_no_host_read_per_training_step(tmp_path, monkeypatch, method):
    """The step loop reads the device once every CHECK_EVERY steps (the non-finite check), not once a step:
    counted on CPU with the device-side reservoir (what an accelerator runs)."""
    monkeypatch.setattr(ReplayBuffer, "_decide_on_host", False)
    counts = []
    original = runner.train_task_steps

    def counted(method_, task, cfg, device, writer, progress, *args, **kwargs):  # the steps and their observe calls
        counters = [getattr(m, n) for m in method_.modules() if isinstance(m, ReplayBuffer) for n in m.HOST_COUNTERS]
        before = progress["step"]
        with HostReads(exempt=counters) as reads:
            yield from original(method_, task, cfg, device, writer, progress, *args, **kwargs)
        counts.append((progress["step"] - before, len(reads.calls), reads.calls))

    monkeypatch.setattr(runner, "train_task_steps", counted)
    run_tiny(tmp_path, f"method={method}", "log.tensorboard=true", "trainer.log_every=1", "trainer.batch_size=5",
             "method.buffer.capacity=50")
    steps = sum(c[0] for c in counts)
    reads = sum(c[1] for c in counts)
    assert steps >= 2 * runner.CHECK_EVERY
    # one read per CHECK_EVERY steps, one at each epoch end, one per TensorBoard burst of points
    allowed = steps // runner.CHECK_EVERY + len(counts) * (1 + -(-steps // runner.LOG_BURST))
    assert reads <= allowed, counts


@pytest.mark.parametrize("method", ["er", "der"])
def test_device_reservoir_gives_the_host_results(tmp_path, monkeypatch, method):
    """The sync-free reservoir (accelerators) and the host pass (CPU default) store the same samples: the same run
    ends with bit-identical weights and buffer."""
    host = run_tiny(tmp_path, f"method={method}", name="host")
    monkeypatch.setattr(ReplayBuffer, "_decide_on_host", False)
    device = run_tiny(tmp_path, f"method={method}", name="device")
    assert device["acc_matrix"] == host["acc_matrix"]
    a, b = final_weights(tmp_path / "host"), final_weights(tmp_path / "device")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_buffer_counters_stay_on_the_host():
    buf = ReplayBuffer(20, (1, 4, 4), 10, store_logits=True).to(torch.float64)  # _apply runs as for .to(device)
    assert buf.logits.dtype == torch.float64 and buf.n_seen.device.type == "cpu"
    buf = buf.to("meta")
    assert buf.x.device.type == "meta" and {buf.n_seen.device.type, buf.n_filled.device.type} == {"cpu"}
    buf.n_seen += 3  # owners may update the count in place (GSS does)
    assert int(buf.n_seen) == 3


# ------------------------------------------------------------------------------------------ CUDA
@needs_cuda
# the default host pass (its slots sent in a non-blocking copy) and the device pass
@pytest.mark.parametrize("on_host", [True, False])
@pytest.mark.parametrize("method", ["er", "der", "derpp"])
def test_cuda_step_loop_does_not_synchronise(tmp_path, monkeypatch, method, on_host):
    monkeypatch.setattr(ReplayBuffer, "_decide_on_host", on_host)
    counts = []
    original = runner.train_task_steps

    def counted(method_, task, cfg, device, writer, progress, *args, **kwargs):  # the steps and their observe calls
        before = progress["step"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield from original(method_, task, cfg, device, writer, progress, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchronizing" in str(w.message)]
        counts.append((progress["step"] - before, len(syncs)))

    monkeypatch.setattr(runner, "train_task_steps", counted)
    run_tiny(tmp_path, f"method={method}", "trainer.device=cuda")
    steps, syncs = sum(c[0] for c in counts), sum(c[1] for c in counts)
    # the checks every CHECK_EVERY steps, and a few per task (the epoch-end check, moving the task's data)
    assert syncs <= steps // runner.CHECK_EVERY + 4 * len(counts), counts


@needs_cuda
def test_cuda_reservoir_stores_what_the_cpu_one_stores():
    """The host pass draws on the CPU whatever the device: a buffer on the GPU, fed the same batches from the same
    generator state, ends bit-identical to one on the CPU (filling, the Python pass, row and vectorised writes)."""
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 256, (b, 3), dtype=torch.uint8, generator=g), torch.randint(0, 10, (b,), generator=g),
                torch.randn(b, 10, generator=g)) for b in [10] * 12 + [1, 2, 64]]
    states = []
    for device in ("cpu", "cuda"):
        buf = ReplayBuffer(50, (3,), 10, store_logits=True).to(device)
        torch.manual_seed(0)
        for step, (x, y, logits) in enumerate(batches):
            buf.add(x.to(device), y.to(device), step, logits=logits.to(device))
        states.append({k: v.cpu() for k, v in buf.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@needs_cuda
def test_cuda_buffer_lives_on_the_device_and_costs_the_same(tmp_path):
    held = {}

    def observe(method, task_id):
        held[task_id] = (method.buffer.x.device.type, method.buffer.n_seen.device.type)

    on_gpu = run_tiny(tmp_path, "method=der", "trainer.device=cuda", observer=observe, name="gpu")
    on_cpu = run_tiny(tmp_path, "method=der", "trainer.device=cpu", name="cpu")
    assert set(held.values()) == {("cuda", "cpu")}
    assert on_gpu["memory"]["total_bytes"] == on_cpu["memory"]["total_bytes"]
    assert on_gpu["memory"]["by_category"] == on_cpu["memory"]["by_category"]
    assert on_gpu["execution"]["device"].startswith("cuda") and on_gpu["execution"]["device_name"]


@needs_cuda
@pytest.mark.parametrize("overrides", [["trainer.amp=bf16"], ["trainer.amp=fp16"],
                                       ["trainer.channels_last=true", "trainer.cudnn_benchmark=true"]])
def test_cuda_settings_train_a_conv_net(tmp_path, overrides):
    results = run_tiny(tmp_path, "method=der", "model=reduced_resnet18", "model.nf=8", "trainer.device=cuda",
                       *overrides)
    assert torch.isfinite(torch.tensor(results["acc_matrix"])).all()
    for override in overrides:
        key, value = override.split("=")
        recorded = results["execution"][key.split(".")[1]]
        assert str(recorded).lower() == value
    assert torch.backends.cudnn.benchmark is False  # restored after the run


@needs_cuda
@pytest.mark.skipif(not os.environ.get("CLZOO_TEST_COMPILE"), reason="inductor compiles for about a minute; set "
                    "CLZOO_TEST_COMPILE=1 to run it (test_compile_keeps_state_keys_and_results checks the wiring)")
def test_compile_inductor_on_cuda(tmp_path):
    results = run_tiny(tmp_path, "method=er", "trainer.device=cuda", "trainer.compile=true")
    assert results["execution"]["compile"] is True and torch.isfinite(torch.tensor(results["acc_matrix"])).all()
