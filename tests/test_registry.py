"""Every registered method: one config whose _target_ and defaults match its class, and the conformance kit."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

import clzoo
from clzoo.methods.registry import get_method_class
from clzoo.testing import check_method

CONF = Path(clzoo.__file__).parent / "conf" / "method"
BUILTINS = sorted(p.stem for p in CONF.glob("*.yaml"))

# what the kit needs beyond the defaults: small buffers for the tiny stream, a conv backbone for CLR
KIT_ARGS = {
    "clr": {"model": {"_target_": "clzoo.models.reduced_resnet18", "nf": 4}},
    # penalty weights inside SGD's stability limit on the tiny stream (its importances are larger than Seq-MNIST's)
    "ewc": {"lambda_": 10.0},
    "oewc": {"lambda_": 10.0},
    "mas": {"lambda_": 0.01},
    # iCaRL's teacher copy counts against the budget: on the 100-100 MLP it alone exceeds the kit's 0.05 MB
    "icarl": {"model": {"_target_": "clzoo.models.MLP", "hidden_sizes": [32]}},
    # the blocks MEMO / DER add later are reserved in the budget: four more 100-100 blocks exceed the kit's 0.05 MB
    "memo": {"model": {"_target_": "clzoo.models.MLP", "hidden_sizes": [24, 24]}},
    "dynamic_der": {"model": {"_target_": "clzoo.models.MLP", "hidden_sizes": [24, 24]}},
}


def _buffer_capacity(value):
    value = value.get("capacity") if isinstance(value, dict) else value
    if isinstance(value, str) and value.startswith("${clzoo.buffer_capacity:"):  # auto under a budget, else N
        value = int(value.rstrip("}").rsplit(",", 1)[1])
    return value


def test_every_config_names_a_registered_class_and_every_builtin_has_a_config():
    registered = {name for name in clzoo.available_methods() if get_method_class(name).__module__.startswith("clzoo.")}
    assert registered == set(BUILTINS), f"configs without a class or classes without a config: {registered ^ set(BUILTINS)}"
    for name in BUILTINS:
        cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        cls = get_method_class(name)
        assert cfg["_target_"] == f"{cls.__module__}.{cls.__qualname__}", name


@pytest.mark.parametrize("name", BUILTINS)
def test_config_defaults_equal_the_class_signature(name):
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    params = inspect.signature(get_method_class(name).__init__).parameters
    for key, value in cfg.items():
        if key == "_target_":
            continue
        assert key in params, f"{name}.yaml sets '{key}', which {name}'s __init__ does not take"
        default = params[key].default
        if key == "buffer":
            assert _buffer_capacity(value) == _buffer_capacity(default), f"{name}: buffer capacity differs"
        else:
            assert value == default, f"{name}.yaml: {key}={value!r} but the class default is {default!r}"
    missing = [k for k, p in params.items() if k not in ("self", "model", "ctx") and p.kind is p.POSITIONAL_OR_KEYWORD
               and k not in cfg]
    assert not missing, f"{name}.yaml lacks hyper-parameters {missing}"


@pytest.mark.parametrize("name", BUILTINS)
def test_conformance_kit(name, tmp_path):
    if name == "avalanche":  # runs Avalanche's own strategy: needs the optional extra
        pytest.importorskip("avalanche")
    kwargs = dict(KIT_ARGS.get(name, {}))
    params = inspect.signature(get_method_class(name).__init__).parameters
    if "buffer" in params:
        kwargs.setdefault("buffer", {"capacity": 50})
    report = check_method(name, workdir=tmp_path, **kwargs)
    assert "resume gives identical results" in report.checks
    assert "ledger equals state_dict bytes" in report.checks
    if "buffer" in params:
        assert "auto buffer fills the budget" in report.checks
