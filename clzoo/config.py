"""Compose run configurations from Python with the same config groups and overrides as ``clzoo-run``, and check
them before any work: :func:`validate` turns a bad value into one line naming the key and the fix."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf, open_dict


class ConfigError(ValueError):
    """A configuration value clzoo cannot use (one line: the key, what is wrong, how to fix it)."""


def buffer_capacity(budget_mb, default):
    """``${clzoo.buffer_capacity:${budget.mb},500}``: ``auto`` when a budget is set, else the default capacity.

    So ``clzoo-run method=er budget.mb=0.5`` sizes ER's buffer from the budget, and ``clzoo-run method=er``
    keeps 500 samples; ``method.buffer.capacity=N`` always wins.
    """
    return "auto" if budget_mb is not None else default


def run_name(stream_name, dataset=None, path=None, stream_choice=None) -> str:
    """The name a run is filed and labelled under: ``stream.name``, except for ``stream.dataset=imagefolder``
    on a stream config's own name, where it is the image folder's name (``stream.path=/data/flowers`` ->
    ``flowers``). An explicit ``stream.name=...`` always wins."""
    if dataset == "imagefolder" and path and (stream_choice is None or stream_name == stream_choice):
        name = Path(os.path.expanduser(str(path))).resolve().name
        return re.sub(r"[^\w.+-]", "_", name) or str(stream_name)
    return str(stream_name)


#: how long a sweep sub-folder name may get before its tail is replaced by a hash (file systems allow 255 bytes)
MAX_DIRNAME = 150


def safe_dirname(text) -> str:
    """``hydra.job.override_dirname`` made a single folder name: ``/`` cannot be in it, and very long names
    (many swept keys) are shortened with a hash of the full text."""
    text = str(text or "defaults").replace("/", "_").replace(os.sep, "_") or "defaults"
    if len(text) > MAX_DIRNAME:
        text = text[: MAX_DIRNAME - 13] + "_" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return text


def register_resolvers() -> None:
    from .help import render

    for name, fn in (("clzoo.buffer_capacity", buffer_capacity), ("clzoo.run_name", run_name),
                     ("clzoo.dirname", safe_dirname), ("clzoo.help", render)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def expand_user_overrides(argv: Sequence[str]) -> list[str]:
    """``data.root=~/data`` -> ``data.root=/home/me/data``: Hydra's override grammar cannot parse an unquoted
    ``~`` and the shell does not expand it after ``key=``, so clzoo expands a leading ``~`` (also when quoted
    for Hydra, ``key='~/data'``)."""
    out = []
    for arg in argv:
        m = re.fullmatch(r"([+~]{0,2}[\w.@/-]+=)(['\"]?)(~[^'\"]*)\2", arg)
        if m and not arg.startswith("-"):
            arg = m.group(1) + os.path.expanduser(m.group(3))
        out.append(arg)
    return out


def compose(overrides: Sequence[str] = ()) -> dict:
    """The resolved configuration ``clzoo-run OVERRIDES...`` would use, as a plain dict (without ``hydra``)."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clzoo.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=expand_user_overrides(overrides),
                            return_hydra_config=True)
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
        with open_dict(cfg):
            del cfg["hydra"]
        container = OmegaConf.to_container(cfg, resolve=True)
    GlobalHydra.instance().clear()
    container["_choices"] = {k: v for k, v in choices.items() if not k.startswith("hydra")}
    return name_run(container)


def name_run(container: dict) -> dict:
    """Set ``stream.name`` to :func:`run_name` (an image-folder run is named after its folder)."""
    stream = container.get("stream") or {}
    name = run_name(stream.get("name"), stream.get("dataset"), stream.get("path"),
                    (container.get("_choices") or {}).get("stream"))
    if stream and name != stream.get("name"):
        stream["name"] = name
    return container


# ---------------------------------------------------------------------------------------------- validation
#: key -> (kind, minimum or None, nullable); kinds: int, float, bool
_TYPED = {
    "seed": ("int", None, False),
    "trainer.epochs": ("int", 1, False),
    "trainer.first_task_epochs": ("int", 1, True),
    "trainer.batch_size": ("int", 1, False),
    "trainer.eval_batch_size": ("int", 1, False),
    "trainer.log_every": ("int", 1, False),
    "trainer.max_tasks": ("int", 1, True),
    "trainer.validation_fraction": ("float", 0, False),
    "trainer.validation_seed": ("int", None, False),
    "trainer.num_threads": ("int", 1, True),
    "stream.n_tasks": ("int", 1, True),
    "stream.classes_per_task": ("int", 1, True),
    "stream.first_task_classes": ("int", 1, True),
    "stream.train_per_task": ("int", 1, True),
    "stream.test_per_task": ("int", 1, True),
    "stream.class_order_seed": ("int", None, True),
    "stream.online": ("bool", None, False),
    "budget.mb": ("float", 0, True),
    "budget.count_model": ("bool", None, False),
    "budget.enforce": ("bool", None, False),
    "data.download": ("bool", None, False),
    "data.store_verify": ("bool", None, False),
    "stream.image_size": ("int", 1, True),
    "log.tensorboard": ("bool", None, False),
    "log.plots": ("bool", None, False),
    "log.progress": ("bool", None, False),
    "log.progress_every_s": ("float", 0, True),
    "log.keep_checkpoints": ("int", 0, True),
}

_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
RESUME_VALUES = (False, True, "must")
DEVICE_RE = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")


def _lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


#: typed keys that also take ``auto`` (chosen by the run for its device)
_AUTO_KEYS = ("trainer.eval_batch_size",)


def _is_kind(value, kind: str) -> bool:
    """``value`` is of ``kind`` (a key of :data:`_KIND_WORDS`); a bool is not a number (YAML's true is not 1)."""
    if kind == "bool":
        return isinstance(value, bool)
    return isinstance(value, {"int": int, "float": (int, float), "str": str}[kind]) and not isinstance(value, bool)


def _check_typed(key: str, value, kind: str, minimum, nullable: bool) -> None:
    if value is None:
        if nullable:
            return
        raise ConfigError(f"{key}=null is not allowed: {key} must be {_KIND_WORDS[kind]}")
    if not _is_kind(value, kind):
        raise ConfigError(f"{key}={value} is not {_KIND_WORDS[kind]}"
                          + (f" (e.g. {key}={minimum if minimum else 1})" if kind != "bool" else ""))
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}={value} must be >= {minimum}")


def check_device(name) -> None:
    """``trainer.device``: auto | cpu | cuda | cuda:N | mps, and it must be usable on this machine."""
    import torch

    name = "auto" if name is None else str(name)
    if not DEVICE_RE.fullmatch(name):
        raise ConfigError(f"trainer.device={name} is not a device: use auto (CUDA when present, else CPU), cpu, "
                          f"cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "torch finds no usable NVIDIA GPU or driver")
            raise ConfigError(f"trainer.device={name} but {why}; use trainer.device=cpu (or auto)")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={name} but only {torch.cuda.device_count()} CUDA device(s) are "
                              f"visible (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.device=mps but Apple's MPS backend is not available here; use trainer.device=cpu")


def validate(cfg: dict, here: bool = True) -> None:
    """Raise :class:`ConfigError` (one line naming the key) for values clzoo cannot use; no data is touched.
    ``here=False`` leaves out what depends on this machine (the device and what it supports), for checking
    configurations that will run elsewhere (``clzoo-leaderboard validate`` on a login node)."""
    for key, (kind, minimum, nullable) in _TYPED.items():
        value = _lookup(cfg, key)
        if value is KeyError:
            continue
        if key in _AUTO_KEYS and value == "auto":
            continue
        _check_typed(key, value, kind, minimum, nullable)
    if cfg.get("resume", False) not in RESUME_VALUES:
        raise ConfigError(f"resume={cfg.get('resume')} is not one of true, false, must")
    fraction = (cfg.get("trainer") or {}).get("validation_fraction") or 0
    if isinstance(fraction, (int, float)) and not 0 <= fraction < 1:
        raise ConfigError(f"trainer.validation_fraction={fraction} must be in [0, 1): the share of each class of "
                          "every task's training data held out for validation (0: none)")
    check_first_task_optimizer(cfg)
    check_method_arguments(cfg)
    store = (cfg.get("data") or {}).get("store", "memory")
    if store not in ("memory", "disk"):
        raise ConfigError(f"data.store={store} is not a store: use memory (one tensor in RAM, the default) or disk "
                          f"(a memory-mapped store read in batches, for data larger than memory)")
    if not here:
        return
    check_device((cfg.get("trainer") or {}).get("device", "auto"))
    from .engine.acceleration import check as check_acceleration

    problem = check_acceleration(cfg.get("trainer") or {}, (cfg.get("trainer") or {}).get("device", "auto"))
    if problem:
        raise ConfigError(problem)


#: the keys of ``trainer.optimizer`` (and of ``trainer.first_task_optimizer``): ``build_optimizer``'s arguments
#: (clzoo.methods.base) and the milestone schedule's; a test keeps the two in step
OPTIMIZER_KEYS = ("name", "lr", "momentum", "weight_decay", "nesterov", "betas", "milestones", "gamma")
OPTIMIZER_NAMES = ("sgd", "adam", "adamw")


def check_optimizer(where: str, opts: dict) -> None:
    """One optimizer mapping (``trainer.optimizer``, or it merged with ``trainer.first_task_optimizer``): known keys,
    a known name, and no setting the chosen optimizer would silently drop (SGD's momentum on Adam, Adam's betas on
    SGD)."""
    unknown = sorted(set(opts) - set(OPTIMIZER_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; an optimizer takes {', '.join(OPTIMIZER_KEYS)}")
    name = opts.get("name", "sgd")
    if name not in OPTIMIZER_NAMES:
        raise ConfigError(f"{where}.name={name} is not an optimizer: use {', '.join(OPTIMIZER_NAMES)}")
    for key in ("lr", "momentum", "weight_decay", "gamma"):
        if key in opts:
            _check_typed(f"{where}.{key}", opts[key], "float", 0, key != "lr")
    momentum, nesterov, betas = opts.get("momentum") or 0, bool(opts.get("nesterov")), opts.get("betas")
    if betas is not None and not isinstance(betas, (int, float, str)):
        betas = list(betas)  # a tuple or a Hydra ListConfig reads as a plain list in the checks and messages
    if name == "sgd":
        if betas is not None:
            raise ConfigError(f"{where}.betas={betas} is Adam's setting and SGD would ignore it; remove it or "
                              f"set {where}.name=adam")
        if nesterov and not momentum:
            raise ConfigError(f"{where}.nesterov=true needs a momentum: set {where}.momentum (e.g. 0.9)")
    else:
        if momentum or nesterov:
            raise ConfigError(f"{where}.momentum / nesterov are SGD's settings and {name} would ignore them; set "
                              f"{where}.momentum=0 (Adam's momentum is {where}.betas, e.g. [0.9,0.999])")
        if betas is not None and not (isinstance(betas, list) and len(betas) == 2 and all(
                _is_kind(b, "float") and 0 <= b < 1 for b in betas)):
            raise ConfigError(f"{where}.betas={betas} must be two numbers in [0, 1), e.g. [0.9,0.999]")


def check_first_task_optimizer(cfg: dict) -> None:
    """``trainer.optimizer`` and ``trainer.first_task_optimizer`` (a mapping of optimizer keys merged over it on the
    first task, for a run that has a first task of its own)."""
    trainer = cfg.get("trainer") or {}
    base = trainer.get("optimizer")
    if isinstance(base, dict):
        check_optimizer("trainer.optimizer", base)
    first = trainer.get("first_task_optimizer")
    if first is None:
        return
    if not isinstance(first, dict):
        raise ConfigError(f"trainer.first_task_optimizer={first} must be a mapping of optimizer settings for the "
                          "first task, e.g. trainer.first_task_optimizer={weight_decay:5e-4,milestones:[60,120]}")
    # merged over the run's settings: unknown keys, the name and what the optimizer would drop, named as the first
    # task's; its own numbers may not be null (a null would not fall back to trainer.optimizer's)
    check_optimizer("trainer.first_task_optimizer", {**(base if isinstance(base, dict) else {}), **first})
    for key in ("lr", "momentum", "weight_decay", "gamma"):
        if key in first:
            _check_typed(f"trainer.first_task_optimizer.{key}", first[key], "float", 0, False)
    if first and (cfg.get("stream") or {}).get("task_free"):
        raise ConfigError("trainer.first_task_optimizer needs task boundaries (a task-free run builds one optimizer "
                          "for the whole stream); remove it or set stream.task_free=false")


#: ranges of method arguments by name, a convention every method of the zoo follows (and plugins are held to):
#: (lowest, lowest allowed?, highest, highest allowed?, what the argument is). Applied to int / float arguments.
METHOD_ARGUMENT_RANGES = {
    **dict.fromkeys(("minibatch_size", "buffer_batch_size", "feature_batch_size", "fit_batch_size", "bias_batch_size",
                     "proto_batch_size", "subsample", "n_iter", "gradient_steps", "window", "recent_size", "hard_size",
                     "rotations", "pool_size", "top_k", "length", "e_length", "k", "projection_dim",
                     "projection_hidden", "emb_dim", "chunk_dim", "chunk_size", "fit_epochs", "bias_epochs",
                     "lr_step_epochs", "cv_lr_step_epochs", "prune_after", "memory_strength", "g_length"),
                    (1, True, None, False, "a count")),
    **dict.fromkeys(("alpha", "beta", "lambda_", "reg_lambda", "aux_weight", "kd_weight", "proto_aug_weight",
                     "sim_lambda", "prototypes_coef", "distill_coef", "ortho_mu", "pull_constraint", "c",
                     "later_lr_scale", "kappa_decay", "mean_threshold", "variance_threshold",
                     "first_task_extra_epochs", "warmup_epochs"), (0, True, None, False, "a weight or count")),
    **dict.fromkeys(("temperature", "kd_temperature", "ins_temperature", "proto_temperature", "supcon_temperature",
                     "distill_temperature", "fit_lr", "bias_lr", "cv_lr", "prototypes_lr", "lr_gamma", "xi",
                     "mixup_alpha"),
                    (0, False, None, False, "a temperature, learning rate or factor")),
    **dict.fromkeys(("mixup_p", "mixup_base_rate", "mixup_lower", "mixup_upper", "kappa_min", "gamma"),
                    (0, True, 1, True, "a probability or fraction")),
    "validation_fraction": (0, True, 1, False, "a fraction"),
}


def _method_class(target):
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception:  # noqa: BLE001 - an unknown method fails in the run itself, with its own message
        return None


def check_method_arguments(cfg: dict) -> None:
    """``method.*``: every key an argument of the method's constructor, each value of the type the constructor
    declares (int, float, bool, str, or None where it allows None), and in range by
    :data:`METHOD_ARGUMENT_RANGES` (a replay batch of -3 would replay all but three stored samples, a negative loss
    weight trains towards -inf)."""
    method = cfg.get("method")
    if not isinstance(method, dict) or "_target_" not in method:
        return
    cls = _method_class(method["_target_"])
    if cls is None:
        return
    import inspect

    params = dict(list(inspect.signature(cls.__init__).parameters.items())[3:])  # after self, model, ctx
    name = (cfg.get("_choices") or {}).get("method") or method["_target_"].rsplit(".", 1)[-1]
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in method if not k.startswith("_") and k not in params)
        if unknown:
            raise ConfigError(f"method.{unknown[0]} is not an argument of {name}; it takes "
                              f"{', '.join(k for k, p in params.items() if p.kind != p.VAR_POSITIONAL)}")
    for key, value in method.items():
        param = params.get(key)
        if param is None:
            continue
        kinds = {part.strip() for part in str(param.annotation).split("|")}
        if param.annotation is not inspect.Parameter.empty and kinds <= {*_KIND_WORDS, "None"}:
            # (lists, mappings and unions with other types are the method's to check)
            if value is None and "None" not in kinds:
                raise ConfigError(f"method.{key}=null is not allowed: {name}'s {key} must be "
                                  f"{' or '.join(_KIND_WORDS[k] for k in sorted(kinds))}")
            if value is not None and not any(_is_kind(value, k) for k in kinds - {"None"}):
                wanted = " or ".join(_KIND_WORDS[k] for k in sorted(kinds - {"None"}))
                raise ConfigError(f"method.{key}={value} is not {wanted} ({name}'s default: {key}={param.default})")
        if key in METHOD_ARGUMENT_RANGES and _is_kind(value, "float"):
            low, low_ok, high, high_ok, what = METHOD_ARGUMENT_RANGES[key]
            if value < low or (value == low and not low_ok) or (high is not None and (
                    value > high or (value == high and not high_ok))):
                interval = (f"in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}" if high is not None
                            else f"{'>=' if low_ok else '>'} {low}")
                raise ConfigError(f"method.{key}={value} must be {interval} ({what}; {name}'s default: "
                                  f"{key}={param.default})")


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_diff(old: dict, new: dict, ignore: Sequence[str] = ()) -> list[str]:
    """``key: old -> new`` for every leaf that differs (dotted keys, sorted)."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb:
            out.append(f"{key}: {va} -> {vb}")
    return out
