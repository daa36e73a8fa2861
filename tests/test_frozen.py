"""ccproxyd/frozen.py: what the one-file build does differently, checked here without building it (tests/test_dist.py runs the file)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ccproxyd import frozen, service


@pytest.fixture
def as_frozen(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(frozen, "FROZEN", True)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return monkeypatch


def test_workers_start_from_the_module_or_from_the_file_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    assert frozen.own_command() == [sys.executable, "-m", "ccproxyd"]
    monkeypatch.setattr(frozen, "FROZEN", True)
    assert frozen.own_command() == [sys.executable]


def test_the_watchdog_accepts_the_launchers_pid_only_when_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    assert service.watchdog_interval() is None
    monkeypatch.setattr(frozen, "FROZEN", True)
    assert service.watchdog_interval() == 1.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert service.watchdog_interval() == 1.0
    monkeypatch.setenv("WATCHDOG_PID", "1" if os.getppid() != 1 else "2")
    assert service.watchdog_interval() is None


def no_default_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frozen.ssl, "get_default_verify_paths", lambda: SimpleNamespace(cafile=None, capath=None))


def test_a_frozen_build_finds_this_machines_ca_bundle_when_its_openssl_finds_none(as_frozen, tmp_path: Path) -> None:
    no_default_ca(as_frozen)
    bundle = tmp_path / "tls-ca-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    as_frozen.setattr(frozen, "CA_BUNDLES", (str(tmp_path / "missing.crt"), str(bundle)))
    frozen.use_system_ca_bundle()
    assert os.environ["SSL_CERT_FILE"] == str(bundle)


def test_the_operators_choice_and_a_working_default_are_left_alone(as_frozen, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    as_frozen.setattr(frozen, "CA_BUNDLES", (str(bundle),))
    as_frozen.setattr(frozen.ssl, "get_default_verify_paths", lambda: SimpleNamespace(cafile=str(bundle), capath=None))
    frozen.use_system_ca_bundle()
    assert "SSL_CERT_FILE" not in os.environ  # the bundled OpenSSL finds certificates where it looks

    no_default_ca(as_frozen)
    as_frozen.setenv("SSL_CERT_DIR", str(tmp_path))
    frozen.use_system_ca_bundle()
    assert "SSL_CERT_FILE" not in os.environ

    as_frozen.delenv("SSL_CERT_DIR")
    as_frozen.setattr(frozen, "CA_BUNDLES", (str(tmp_path / "none.pem"),))
    frozen.use_system_ca_bundle()
    assert "SSL_CERT_FILE" not in os.environ  # nothing found: nothing invented


def test_an_installed_ccproxyd_changes_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    no_default_ca(monkeypatch)
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    monkeypatch.setattr(frozen, "CA_BUNDLES", (str(bundle),))
    frozen.use_system_ca_bundle()
    assert "SSL_CERT_FILE" not in os.environ
