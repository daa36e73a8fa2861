"""Running as the one-file build (``make dist``, PyInstaller): what differs from an installed ccproxyd.

A one-file executable runs as two processes. Its launcher unpacks the bundle to a
temporary directory, starts the program from it as a child, forwards every signal
to it, exits with its status and removes the directory. Under systemd the launcher
is the main process. The same executable started again by the program (a worker)
reuses the unpacked bundle and runs in that one process, with no launcher of its own.
"""

from __future__ import annotations

import os
import sys

FROZEN = bool(getattr(sys, "frozen", False))


def own_command() -> list[str]:
    """The command that starts this ccproxyd again: the executable itself when frozen, else its module."""
    return [sys.executable] if FROZEN else [sys.executable, "-m", "ccproxyd"]


def own_pids() -> tuple[int, ...]:
    """The pids systemd may know this process by: its own, and a frozen one's launcher (its parent)."""
    return (os.getpid(), os.getppid()) if FROZEN else (os.getpid(),)
