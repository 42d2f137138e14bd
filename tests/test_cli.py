"""The gil-adapt command line: --version, --help of every command, bad input."""
from __future__ import annotations

import subprocess
import sys

import pytest

import gil_adapt

CLI = [sys.executable, "-m", "gil_adapt"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)


def test_version_is_the_installed_one():
    out = cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"gil-adapt {gil_adapt.__version__}"
    assert gil_adapt.__version__ != "0+unknown"  # read from the installed metadata


@pytest.mark.parametrize("command", ["demo", "info", "bench", "run"])
def test_every_command_answers_help(command):
    out = cli(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: gil-adapt " + command) or \
        f"gil-adapt {command}" in out.stdout.splitlines()[0], out.stdout[:200]
    assert "BENCH.md" not in out.stdout  # no file a user does not have


def test_top_level_help_and_errors():
    assert cli("--help").returncode == 0
    assert cli().returncode == 2
    bad = cli("nonsense")
    assert bad.returncode == 2 and "unknown command 'nonsense'" in bad.stderr
    assert cli("info", "extra").returncode == 2


def test_bench_list_names_every_strategy_it_accepts():
    out = cli("bench", "--list")
    assert out.returncode == 0, out.stderr
    from gil_adapt.bench import strategies

    listed = out.stdout.split("strategies:")[1]
    for name in ("threads-default", "naive-512", "processes", "gil-adapt", "asyncio-32"):
        assert name in listed
        assert strategies.parse_strategy(name).name == name
