"""docs/api.md is tested against the code: every entry exists with the documented parameters and defaults, and
every public name of the contract classes is documented."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch

import clzoo
from clzoo import Budget, Method, ReplayBuffer, RunContext, StreamInfo
from clzoo.data import TrainingTask
from clzoo.memory.buffer import ReplayBatch
from clzoo.models import MLP, ContinualModel

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
CONTRACT = {cls.__name__: cls for cls in (Method, RunContext, StreamInfo, TrainingTask, ReplayBuffer, ReplayBatch,
                                          Budget, ContinualModel)}
ENTRY = re.compile(r"^#### `([\w.]+?)(?:\((.*)\))?`$")


def _entries() -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for line in DOC.read_text().splitlines() if (m := ENTRY.match(line))]


def _instances() -> dict[str, object]:
    info = StreamInfo(2, 4, (1, 8, 8), [[0, 1], [2, 3]])
    model = ContinualModel(MLP((1, 8, 8), hidden_sizes=[8]), 4)
    return {"Method": Method(model, RunContext(info)), "ReplayBuffer": ReplayBuffer(4, (1, 8, 8), 4),
            "ContinualModel": model}


def _resolve(name: str):
    """(owner, attribute name or None, object) for a documented dotted name."""
    head, _, rest = name.partition(".")
    if head in CONTRACT:
        cls = CONTRACT[head]
        if not rest:
            return None, None, cls
        return cls, rest, getattr(cls, rest, None)
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return None, None, obj
    raise AssertionError(f"cannot resolve {name}")


def _documented_params(text: str) -> list[tuple[str, object, str]]:
    """(name, default or inspect.Parameter.empty, kind) of a documented parameter list."""
    args = ast.parse(f"def f({text}): pass").body[0].args
    out = []
    plain = args.args
    defaults = [inspect.Parameter.empty] * (len(plain) - len(args.defaults)) + [
        eval(compile(ast.Expression(d), "<doc>", "eval"), {"torch": torch}) for d in args.defaults]
    out += [(a.arg, d, "plain") for a, d in zip(plain, defaults)]
    if args.kwarg:
        out.append((args.kwarg.arg, inspect.Parameter.empty, "kwargs"))
    return out


def test_every_entry_exists_with_the_documented_signature():
    entries = _entries()
    assert len(entries) > 80, "docs/api.md lost its entries"
    instances = _instances()
    for name, params in entries:
        owner, attr, obj = _resolve(name)
        if attr is not None and obj is None:  # an instance attribute or a dataclass field without a default
            fields = {f.name for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else set()
            inst = instances.get(owner.__name__)
            assert attr in fields or (inst is not None and hasattr(inst, attr)), f"{name} is documented but missing"
            assert params is None, f"{name} is documented as callable but is an attribute"
            continue
        if params is None:
            continue
        assert callable(obj), f"{name} is documented as callable but is not"
        sig = inspect.signature(obj)
        real = [(p.name, p.default, "kwargs" if p.kind is p.VAR_KEYWORD else "plain")
                for p in sig.parameters.values() if p.name not in ("self", "cls")]
        documented = _documented_params(params)
        assert [(n, k) for n, _, k in documented] == [(n, k) for n, _, k in real], \
            f"{name}: documented parameters {documented} != code {real}"
        for (n, d_doc, _), (_, d_real, _) in zip(documented, real):
            assert d_doc == d_real, f"{name}: parameter {n} documented default {d_doc!r} != code {d_real!r}"


def _public_names(cls, instance=None) -> set[str]:
    names = {k for k in vars(cls) if not k.startswith("_")}
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    if instance is not None:
        internals = set(torch.nn.Module().__dict__)
        names |= {k for k in vars(instance) if not k.startswith("_") and k not in internals}
        if isinstance(instance, torch.nn.Module):
            names |= {k for k in [*instance._buffers, *instance._modules] if not k.startswith("_")}
    return names


@pytest.mark.parametrize("cls", list(CONTRACT.values()), ids=list(CONTRACT))
def test_every_public_name_of_the_contract_is_documented(cls):
    documented = {name.split(".", 1)[1] for name, _ in _entries() if name.startswith(cls.__name__ + ".")}
    instance = _instances().get(cls.__name__)
    missing = _public_names(cls, instance) - documented
    assert not missing, f"docs/api.md does not document {cls.__name__}: {sorted(missing)}"


def test_api_page_is_linked_from_the_plugin_guide_and_the_readme():
    root = DOC.parents[1]
    assert "api.md" in (root / "docs" / "plugins.md").read_text()
    assert "docs/api.md" in (root / "README.md").read_text()
    assert clzoo.Method is Method


def test_the_unit_test_example_runs():
    text = DOC.read_text()
    section = text[text.index("## Unit-testing a method"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    exec(compile(code, "docs/api.md", "exec"), {"__name__": "api_example"})
