"""Every ``clzoo-run`` command written in README.md and docs/ runs as written: each is parsed the way the shell and
Hydra would parse it, composed with the project's config (every value of a sweep), and checked by
:func:`clzoo.config.validate` (types, device) - the checks ``clzoo-run`` makes before any work. The
``clzoo-leaderboard`` commands are parsed by its own argument parser."""
from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "README.md"]
#: methods that documentation shows from a separate package (docs/plugins.md's worked example)
EXTERNAL_METHODS = {"smooth_er"}
#: placeholders documentation uses for "your value", replaced by something that parses
PLACEHOLDERS = {"<run>": "seed0_2026-01-01_00-00-00", "method=NAME": "method=er"}


def documented_commands(program: str) -> list[tuple[str, str]]:
    """(file:line, command) for every ``program ...`` in fenced code blocks and inline code spans."""
    found = []
    for doc in DOCS:
        if not doc.is_file():
            continue
        text = doc.read_text()
        in_fence = False
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            line, where = lines[i], f"{doc.relative_to(ROOT)}:{i + 1}"
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
                i += 1
                continue
            if in_fence:
                while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continued on the next line
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                for part in re.split(r"&&|;", line):
                    part = part.strip()
                    if part.startswith(program + " ") or part == program:
                        found.append((where, part))
            else:
                for span in re.findall(r"`([^`]+)`", line):
                    if span.startswith(program + " "):  # a bare `clzoo-run` in prose names the program
                        found.append((where, span))
            i += 1
    return found


def _words(command: str) -> list[str]:
    for old, new in PLACEHOLDERS.items():
        command = command.replace(old, new)
    return shlex.split(command, comments=True)[1:]


RUN_COMMANDS = documented_commands("clzoo-run")


def test_the_documentation_has_clzoo_run_commands():
    assert len(RUN_COMMANDS) >= 10, RUN_COMMANDS


@pytest.mark.parametrize("where,command", RUN_COMMANDS, ids=[w for w, _ in RUN_COMMANDS])
def test_documented_clzoo_run_command_composes(where, command):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from clzoo.config import compose, expand_user_overrides, validate

    words = _words(command)
    flags = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--info"}
    words = [w for w in words if w not in flags]
    if "--cfg" in words:
        k = words.index("--cfg")
        del words[k:k + 2]
    overrides = expand_user_overrides(words)
    if any(o.startswith("method=") and o.split("=", 1)[1] in EXTERNAL_METHODS for o in overrides):
        pytest.skip("a method from the documented example package")
    parsed = OverridesParser.create().parse_overrides(overrides)  # Hydra's grammar, as clzoo-run parses them
    sweeps = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line.split("=", 1)[1]]
              for o in parsed]
    keys = [o.input_line.split("=", 1)[0] for o in parsed]
    # every value of every swept key at least once (the i-th combination takes value i of each list)
    n = max((len(v) for v in sweeps), default=1)
    for i in range(n):
        combo = [f"{k}={v[i % len(v)]}" for k, v in zip(keys, sweeps)]
        try:
            cfg = compose(combo)
            validate({**cfg, "trainer": {**cfg["trainer"], "device": "cpu"}})  # the device is the machine's
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"{where}: `{command}` does not run as written: {type(err).__name__}: {err}")


LEADERBOARD_COMMANDS = documented_commands("clzoo-leaderboard")


@pytest.mark.parametrize("where,command", LEADERBOARD_COMMANDS, ids=[w for w, _ in LEADERBOARD_COMMANDS])
def test_documented_clzoo_leaderboard_command_parses(where, command):
    from clzoo.leaderboard.cli import parser

    words = _words(command)
    try:
        parser().parse_args(words)
    except SystemExit as err:
        pytest.fail(f"{where}: `{command}` is not a valid clzoo-leaderboard command (exit {err.code})")


def test_tilde_in_an_override_is_expanded(tmp_path, monkeypatch):
    """``data.root=~/data`` (README's tour) reaches clzoo as the home folder's data, quoted for Hydra or not."""
    from clzoo.config import compose, expand_user_overrides

    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_user_overrides(["data.root=~/data", "stream.path='~/x'", "-m", "seed=0,1"]) == [
        f"data.root={tmp_path}/data", f"stream.path={tmp_path}/x", "-m", "seed=0,1"]
    assert compose(["data.root=~/data"])["data"]["root"] == f"{tmp_path}/data"
