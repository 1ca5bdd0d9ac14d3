"""``clzoo-run --help``: a page in clzoo's words, generated from the config files so it cannot drift from them.

Hydra renders ``hydra.help.template`` (set in ``conf/config.yaml``); its ``${clzoo.help:groups}`` and
``${clzoo.help:options}`` parts come from here: every option of every config group with the first comment line
of its yaml, and the documented keys (``trainer.*``, ``stream.*``, ``budget.*``, ``log.*``, ...) with their
defaults and inline comments.
"""
from __future__ import annotations

import re
from pathlib import Path

CONF = Path(__file__).resolve().parent / "conf"
#: the groups a user chooses from (``base`` only holds the stream defaults every stream config starts from)
GROUPS = ("stream", "method", "model", "trainer", "budget")
#: files whose keys are documented, and the prefix the keys take on the command line
KEY_FILES = (("config.yaml", ""), ("trainer/default.yaml", "trainer."), ("base/stream.yaml", "stream."),
             ("budget/default.yaml", "budget."))


def first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def group_lines(conf: Path = CONF) -> list[str]:
    lines = []
    for group in GROUPS:
        files = sorted((conf / group).glob("*.yaml"))
        if not files:
            continue
        lines.append(f"{group}=")
        width = max(len(f.stem) for f in files)
        for f in files:
            text = first_comment(f)
            text = text if len(text) <= 100 else text[:97].rstrip() + "..."
            lines.append(f"    {f.stem:<{width}}  {text}")
    return lines


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)(?:\s*#\s*(?P<comment>.*))?$")


def key_lines(path: Path, prefix: str) -> list[tuple[str, str, str]]:
    """(dotted key, default, inline comment) for every leaf key of a yaml file, nested keys included."""
    out, stack = [], []
    for line in path.read_text().splitlines():
        m = _KEY_LINE.match(line)
        if not m or line.lstrip().startswith("-") or m.group("key") in ("defaults", "hydra", "_target_"):
            if m and m.group("key") == "hydra" and not m.group("indent"):
                break  # hydra's own settings end the documented part of config.yaml
            continue
        depth = len(m.group("indent")) // 2
        stack = stack[:depth] + [m.group("key")]
        value = m.group("value").strip()
        if value == "":
            continue  # a mapping: its children follow
        out.append((prefix + ".".join(stack), value, (m.group("comment") or "").strip()))
    return out


def option_lines(conf: Path = CONF) -> list[str]:
    rows = []
    for name, prefix in KEY_FILES:
        rows += key_lines(conf / name, prefix)
    width = min(max(len(f"{k}={v}") for k, v, _ in rows), 44)
    return [f"    {k + '=' + v:<{width}}  {c}".rstrip() for k, v, c in rows]


def render(part: str) -> str:
    """The text for ``${clzoo.help:PART}``: ``groups`` or ``options``."""
    lines = {"groups": group_lines, "options": option_lines}[part]()
    return "\n".join(lines).replace("$", "$$")  # Hydra passes the page through string.Template
