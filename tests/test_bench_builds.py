"""bench/startup.py and bench/paired.py, which compare the one-file build with the installed one: each run end to end
(no timing asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_one_run_gives_a_row_of_figures_per_command() -> None:
    command = f"{sys.executable} -m ccproxyd"
    proc = subprocess.run([sys.executable, "-m", "bench.startup", "--runs", "1", command], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = proc.stdout.splitlines()[-1]
    found = re.fullmatch(r"\| `(.+)` \| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) MB \|", row)
    assert found, proc.stdout
    assert found[1] == command and float(found[2]) > 0 and float(found[4]) > 10


def test_a_command_that_never_listens_fails_the_run() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.startup", "--runs", "1", "false"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "startup exited with status 1" in proc.stderr


def test_a_paired_round_gives_cpu_per_request_for_both_commands() -> None:
    command = f"{sys.executable} -m ccproxyd"
    proc = subprocess.run([sys.executable, "-m", "bench.paired", "--rounds", "1", "--requests", "50", "--connections", "2",
                           command, command], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.fullmatch(r"\| 1 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", proc.stdout.splitlines()[-2])
    assert found, proc.stdout
    first, second, ratio = map(float, found.groups())
    assert first > 0 and second > 0 and abs(ratio - second / first) < 0.01
