"""``meshd completion bash|zsh``: completion run by a real bash (and zsh when installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from meshd.cli import completion
from meshd.cli.main import build_parser


def _complete(words: list[str]) -> list[str]:
    """What bash offers after ``words`` (the last one being typed)."""
    script = completion.bash(build_parser())
    quoted = " ".join(f"'{w}'" for w in words)
    probe = (
        f"COMP_WORDS=({quoted}); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); _meshd; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script + "\n" + probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stderr == "", out.stderr
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (["meshd", "wo"], ["workload", "workloads"]),
        (["meshd", "workload", ""], ["--help", "logs", "rm", "show", "start", "stop"]),
        (["meshd", "workload", "logs", "--f"], ["--follow"]),
        (["meshd", "--data-dir", "/x", "network", "cr"], ["create"]),  # a value is skipped
        (["meshd", "run", "--preset", "l"], ["lan", "local"]),
        (["meshd", "submit", "--cpus", ""], []),  # a number: nothing to offer
    ],
)
def test_bash_completes_commands_flags_and_choices(words: list[str], offered: list[str]) -> None:
    assert _complete(words) == offered


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_bash_completes_file_names_after_a_path_flag() -> None:
    here = __file__
    prefix = here[: -len("completion.py")]
    assert here in _complete(["meshd", "init", "--config", prefix])


def test_every_command_of_the_parser_is_offered() -> None:
    script = completion.bash(build_parser())
    for command in ("init", "submit", "network", "fence", "bmc", "completion", "config"):
        assert f" {command}" in script.split("[meshd]=", 1)[1].splitlines()[0]


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed (apt-get install zsh)")
def test_zsh_loads_the_script_and_defines_the_completer() -> None:
    script = completion.zsh(build_parser())
    out = subprocess.run(
        ["zsh", "-f", "-c", script + "\nprint -r -- ${+functions[_meshd]}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("1"), out.stderr


def test_the_command_prints_the_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "meshd", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.startswith("# bash completion for meshd")
    assert "complete -o default -F _meshd meshd" in out.stdout
