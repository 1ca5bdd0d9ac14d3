"""How a run uses its device: mixed precision, ``torch.compile``, channels-last, cuDNN autotuning.

``trainer.amp`` (none | bf16 | fp16), ``trainer.compile``, ``trainer.channels_last`` and ``trainer.cudnn_benchmark``
are all off by default, so a run computes what it always did. They are set up around the training step, never
inside it:

* ``amp``: the whole run (training steps, a method's own loops, evaluation) runs under :func:`torch.autocast`;
  parameters, optimizer state and stored exemplars stay as they are. ``fp16`` needs CUDA and adds a
  :class:`torch.amp.GradScaler` that :meth:`Method.step <clzoo.methods.base.Method.step>` and ``fit_step`` go
  through (loss scaling, a skipped step on overflow; methods that call ``backward`` themselves, SI, MIR and
  NAPA-VQ's step, train unscaled). ``bf16`` needs no scaler and works on CPUs too. Note that torch's GradScaler
  reads its overflow flag on the host at every step (one synchronisation a step) unless the optimizer is fused;
  bf16 has no such read.
* ``compile``: the model's backbone (its forward, where the work is) is compiled in place with
  :meth:`torch.nn.Module.compile`, so ``state_dict`` keys, checkpoints and the memory ledger are unchanged.
* ``channels_last``: the method's 4-D weights and the image batches the transforms produce use the NHWC memory
  layout (faster convolutions on GPUs with tensor cores); nothing changes for a model without convolutions.
* ``cudnn_benchmark``: :data:`torch.backends.cudnn.benchmark` for the run (CUDA only), restored afterwards.

What was in effect is recorded in ``results.json`` under ``execution`` (with the device and its name).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

AMP_CHOICES = ("none", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: channels-last is left off on a CPU for nets with a convolution narrower than this: torch 2.14's CPU backward
#: corrupted the heap ("free(): invalid next size", "double free or corruption") on the reduced ResNet-18 with
#: nf = 4 or 6 (4 to 48 channels), and ran clean at nf = 8, 12, 16, 20 and on ResNet-32 (measured on an AMD EPYC)
CHANNELS_LAST_MIN_CPU = 8

#: extra arguments of :meth:`torch.nn.Module.compile` (the tests use the ``eager`` backend: inductor needs tens of
#: seconds to build even a tiny model on a small CPU)
COMPILE_OPTIONS: dict = {}


@dataclass(frozen=True)
class Acceleration:
    """The trainer's device settings (see the module docstring)."""

    amp: str = "none"
    compile: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False

    @classmethod
    def from_trainer(cls, trainer: dict) -> "Acceleration":
        amp = trainer.get("amp")
        return cls(amp="none" if amp in (None, False) else str(amp), compile=bool(trainer.get("compile") or False),
                   channels_last=bool(trainer.get("channels_last") or False),
                   cudnn_benchmark=bool(trainer.get("cudnn_benchmark") or False))

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.amp)

    # ---------------------------------------------------------------------------------------- around the run
    @contextlib.contextmanager
    def around_run(self, device: torch.device):
        """The process-wide settings of one run: autocast and cuDNN autotuning, restored when the run ends (a
        worker process may run several configurations in turn)."""
        previous = torch.backends.cudnn.benchmark
        if self.cudnn_benchmark and device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        try:
            with self.autocast(device):
                yield
        finally:
            torch.backends.cudnn.benchmark = previous

    def autocast(self, device: torch.device):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.amp_dtype)

    def grad_scaler(self, device: torch.device) -> "torch.amp.GradScaler | None":
        """fp16 on CUDA: the loss scaler that keeps small gradients from underflowing (none otherwise)."""
        if self.amp == "fp16" and device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None

    # ---------------------------------------------------------------------------------------- the method
    def prepare(self, method: nn.Module, device: torch.device) -> dict:
        """Apply channels-last and compilation to ``method`` (already on ``device``) and its transforms, hand it
        the gradient scaler, and return what is in effect (recorded in results.json)."""
        ctx = getattr(method, "ctx", None)
        conv_widths = [p.shape[0] for p in method.parameters() if p.dim() == 4]
        channels_last = self.channels_last and bool(conv_widths)  # nothing to convert without convolutions
        if channels_last and device.type == "cpu" and min(conv_widths) < CHANNELS_LAST_MIN_CPU:
            print(f"trainer.channels_last: left off: a convolution has {min(conv_widths)} output channels, and torch's "
                  f"CPU kernels corrupt memory in channels-last backward passes below {CHANNELS_LAST_MIN_CPU} "
                  f"(recorded as false)")
            channels_last = False
        if channels_last:
            method.to(memory_format=torch.channels_last)
            for transform in (getattr(ctx, "train_transform", None), getattr(ctx, "eval_transform", None)):
                if transform is not None:
                    transform.channels_last = True
        if ctx is not None:
            ctx.grad_scaler = self.grad_scaler(device)
        if self.compile:
            target = compile_target(method)
            target.compile(**COMPILE_OPTIONS)
        return self.record(device, channels_last_applied=channels_last)

    def record(self, device: torch.device, channels_last_applied: bool | None = None) -> dict:
        out = {"device": str(device), "device_name": device_name(device), **asdict(self)}
        out["cudnn_benchmark"] = bool(self.cudnn_benchmark and device.type == "cuda")
        if channels_last_applied is not None:
            out["channels_last"] = channels_last_applied  # false for a model without convolutions
        return out


#: evaluation images per batch when ``trainer.eval_batch_size=auto``: on a CPU, convolutional nets evaluate about twice
#: as fast at 128 as at 1,000 (the activations of a small batch stay in cache; measured by bench/layout.py, bench/LAYOUT.md)
#: and an MLP loses nothing; an accelerator wants large batches
EVAL_BATCH_CPU, EVAL_BATCH_ACCELERATOR = 128, 1000


def eval_batch_size(trainer: dict, device: torch.device) -> int:
    """``trainer.eval_batch_size`` as a number: the configured one, or for ``auto`` (the default) the device's. The
    batch size of evaluation does not change what a run computes, so it stays out of the run's hash."""
    value = trainer.get("eval_batch_size", "auto")
    if value in (None, "auto"):
        return EVAL_BATCH_CPU if torch.device(device).type == "cpu" else EVAL_BATCH_ACCELERATOR
    return int(value)


def compile_target(method: nn.Module) -> nn.Module:
    """The module ``trainer.compile`` compiles: the model's backbone when it has one (``model(x)`` and
    ``model.features(x)`` both go through it), else the whole model."""
    model = getattr(method, "model", method)
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def device_name(device: torch.device) -> str:
    """The GPU's name (``NVIDIA H100 80GB HBM3``), or the CPU's model name where the system tells it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or device.type


def check(trainer: dict, device_name_: str) -> str | None:
    """One line naming a bad ``trainer.amp`` / ``compile`` / ``channels_last`` / ``cudnn_benchmark`` value (None:
    fine). ``device_name_`` is the configured ``trainer.device`` (fp16 needs CUDA)."""
    amp = trainer.get("amp", "none")
    if amp not in (None, False) and str(amp) not in AMP_CHOICES:
        return (f"trainer.amp={amp} is not a precision: use none (full float32), bf16 (bfloat16 autocast, CPU or "
                f"CUDA) or fp16 (float16 autocast with loss scaling, CUDA only)")
    for key in ("compile", "channels_last", "cudnn_benchmark"):
        value = trainer.get(key, False)
        if value is not None and not isinstance(value, bool):
            return f"trainer.{key}={value} is not true or false"
    if amp == "fp16":
        device = str(device_name_ or "auto")
        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if not on_cuda:
            return ("trainer.amp=fp16 needs a CUDA device (float16 autocast with loss scaling); on this device use "
                    "trainer.amp=bf16 or trainer.amp=none")
    return None
