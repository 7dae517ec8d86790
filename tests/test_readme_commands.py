"""The READMEs' commands are real: every ``mnistlab`` line in a shell code block of README.md and
README.zh-CN.md names an existing command (and sub-command) and only flags that command accepts,
checked against the real parser; lines without placeholders (RUN, IMG, N, …) must parse whole.
The two quick starts are identical and the Chinese README uses the same commands as the English one."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from mnistlab import cli

REPO_ROOT = Path(__file__).resolve().parents[1]
READMES = {"en": REPO_ROOT / "README.md", "zh": REPO_ROOT / "README.zh-CN.md"}
QUICK_START = {"en": "## Quick start", "zh": "## 快速开始"}
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.M | re.S)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_0-9]*$|…|\.\.\.|<|>")
# Commands the zh README documents that README.md does not show yet (issue 12: the lead adds
# `mnistlab notebooks` to README.md); anything else the zh README uses must be in README.md too.
NOT_YET_IN_ENGLISH: set[str] = set()  # commands the Chinese README may show first


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced code blocks marked bash/sh/shell/console or unmarked."""
    return [body for lang, body in FENCE.findall(text) if lang.strip().split(" ")[0] in SHELL_LANGUAGES]


def command_lines(block: str) -> list[list[str]]:
    """Each ``mnistlab …`` command of a block as tokens: continuation lines joined, prompts and
    comments dropped, ``a && b; c | d`` split, optional ``[--flag]`` brackets removed."""
    joined = re.sub(r"\\\n", " ", block)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote: not a command line
            continue
        segment: list[str] = []
        for token in tokens + ["&&"]:
            if token in ("&&", "||", ";", "|"):
                if segment and segment[0] == "mnistlab":
                    commands.append(segment)
                segment = []
            else:
                segment.append(token.strip("[]") if token.startswith("[") or token.endswith("]") else token)
    return commands


def readme_commands(name: str) -> list[list[str]]:
    return [c for block in shell_blocks(READMES[name].read_text(encoding="utf-8")) for c in command_lines(block)]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def resolve(parser: argparse.ArgumentParser, tokens: list[str]) -> tuple[list[str], argparse.ArgumentParser, list[str]]:
    """Walk ``mnistlab data info --json`` down the sub-parsers: (["data", "info"], its parser, the rest)."""
    path, rest = [], tokens[1:]
    while rest and not rest[0].startswith("-") and (choices := subcommands(parser)):
        assert rest[0] in choices, f"`{' '.join(tokens)}`: no command {rest[0]!r} (expected one of {', '.join(choices)})"
        parser, path, rest = choices[rest[0]], path + [rest[0]], rest[1:]
    return path, parser, rest


def command_path(tokens: list[str]) -> str:
    return " ".join(resolve(cli.build_parser(), tokens)[0])


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return cli.build_parser()


def test_the_extractor_on_a_known_block():
    assert shell_blocks("```bash\nmnistlab models\n```\n```python\nimport mnistlab\n```\n") == ["mnistlab models\n"]
    body = ("$ pip install . && mnistlab train cnn --out runs/cnn && mnistlab evaluate runs/cnn  # note\n"
            "mnistlab predict runs/cnn a.png [--json]\nmnistlab export runs/cnn \\\n  --format tflite\necho mnistlab\n")
    assert command_lines(body) == [["mnistlab", "train", "cnn", "--out", "runs/cnn"], ["mnistlab", "evaluate", "runs/cnn"],
                                   ["mnistlab", "predict", "runs/cnn", "a.png", "--json"],
                                   ["mnistlab", "export", "runs/cnn", "--format", "tflite"]]


def test_resolve_refuses_what_the_parser_lacks(parser):
    with pytest.raises(AssertionError, match="no command 'trian'"):
        resolve(parser, ["mnistlab", "trian", "cnn"])
    path, sub, _ = resolve(parser, ["mnistlab", "data", "info", "--json"])
    assert path == ["data", "info"] and "--json" in sub._option_string_actions
    assert "--nope" not in sub._option_string_actions


@pytest.mark.parametrize("name", sorted(READMES))
def test_every_command_and_flag_in_the_readme_exists(name, parser):
    commands = readme_commands(name)
    assert len(commands) >= 10, f"{READMES[name].name}: expected its command examples"
    for tokens in commands:
        shown = " ".join(tokens)
        path, sub, rest = resolve(parser, tokens)
        assert path, f"{READMES[name].name}: `{shown}` names no command"
        for token in rest:
            if token.startswith("-") and token not in ("-", "--"):
                flag = token.split("=", 1)[0]
                assert flag in sub._option_string_actions, f"{READMES[name].name}: `{shown}`: {flag} is not an option of `mnistlab {' '.join(path)}`"
        if not any(PLACEHOLDER.search(t) for t in tokens):
            errors = io.StringIO()
            try:
                with contextlib.redirect_stderr(errors):
                    parser.parse_args(tokens[1:])
            except SystemExit:
                pytest.fail(f"{READMES[name].name}: `{shown}` does not parse: {errors.getvalue().strip()}")


def quick_start_blocks(name: str) -> list[str]:
    text = READMES[name].read_text(encoding="utf-8")
    heading = QUICK_START[name]
    assert heading in text, f"{READMES[name].name}: no {heading!r} section"
    section = text.split(heading, 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.M)[0]
    return [body.strip() for body in shell_blocks(section)]


def test_the_two_quick_starts_are_identical():
    english = quick_start_blocks("en")
    assert len(english) == 2 and english[0].startswith("pip install . &&")
    assert quick_start_blocks("zh") == english


def test_the_chinese_readme_uses_the_english_readmes_commands():
    english = {command_path(tokens) for tokens in readme_commands("en")}
    chinese = {command_path(tokens) for tokens in readme_commands("zh")}
    assert english - chinese == set(), f"README.zh-CN.md lacks commands README.md shows: {sorted(english - chinese)}"
    extra = chinese - english - NOT_YET_IN_ENGLISH
    assert extra == set(), f"README.zh-CN.md shows commands README.md does not: {sorted(extra)}"


def test_readme_links_to_the_chinese_readme():
    """Each README links the other in its first lines: a Chinese reader finds the front door."""
    assert "README.zh-CN.md" in READMES["en"].read_text(encoding="utf-8")[:500]
    assert "README.md" in READMES["zh"].read_text(encoding="utf-8")[:500]
