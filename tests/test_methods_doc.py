"""docs/methods.md has a complete section for every registered method (built-in or installed)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clzoo.methods.registry import available_methods

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "methods.md"
CONF = ROOT / "clzoo" / "conf" / "method"
#: the parts every section has (a section shared by two methods may say "What they do", "Differences from the papers")
LABELS = (("**What it does", "**What they do"), ("**Options",), ("**Memory",), ("**Differs from the paper", "**Differences from the paper"))
TEMPLATE = """Add a section to docs/methods.md for method '{name}' (see the others there), in this form:

## <Full name> (`method={name}`)

<paper reference; official code (repository, commit, file); clzoo's file>

**What it does.** <the algorithm in a few sentences>

**Options.** <every key of clzoo/conf/method/{name}.yaml in backticks, with its default and the paper's value>

**Memory.** <what it keeps between tasks and the ledger category it is counted under>

**Differs from the paper.** <what differs and why, or "Nothing known.">

```
clzoo-run ... method={name} ...
```
"""


def sections() -> dict[str, str]:
    text = DOC.read_text()
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    out = {}
    for part in parts:
        for name in re.findall(r"`method=([\w-]+)`", part.splitlines()[0]):  # a heading may name several
            out[name] = part
    return out


def _option_keys(name: str) -> list[str]:
    path = CONF / f"{name}.yaml"
    if not path.is_file():
        return []
    cfg = yaml.safe_load(path.read_text()) or {}
    keys = []
    for k, v in cfg.items():
        if k.startswith("_") or k == "defaults":
            continue
        keys += [f"{k}.{sub}" for sub in v] if isinstance(v, dict) else [k]
    return keys


@pytest.mark.parametrize("name", available_methods())
def test_every_registered_method_has_a_complete_section(name):
    found = sections()
    assert name in found, TEMPLATE.format(name=name)
    section = found[name]
    missing = [alts[0] for alts in LABELS if not any(a in section for a in alts)]
    assert not missing, f"docs/methods.md section of '{name}' lacks {missing}.\n" + TEMPLATE.format(name=name)
    for key in _option_keys(name):
        assert f"`{key}`" in section, (f"docs/methods.md section of '{name}' does not document its option `{key}` "
                                       f"(clzoo/conf/method/{name}.yaml)")
    commands = re.findall(r"```\n(.*?)```", section, flags=re.S)
    assert any("clzoo-run" in c and f"method={name}" in c for c in commands), (
        f"docs/methods.md section of '{name}' needs a fenced command `clzoo-run ... method={name}`")


def test_no_section_for_a_method_that_does_not_exist():
    assert set(sections()) <= set(available_methods())
