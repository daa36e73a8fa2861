"""bench/client.py runs end to end: one row per way of making the upstream exchange (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_variant_makes_its_exchanges_and_gets_a_row() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.client", "--rounds", "1", "--requests", "16"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["exchange, this process only", "ccproxyd", "aiohttp", "raw"]
