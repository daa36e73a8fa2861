"""Running as the one-file build (``make dist``, PyInstaller): what differs from an installed ccproxyd.

A one-file executable runs as two processes. Its launcher unpacks the bundle to a
temporary directory, starts the program from it as a child, forwards every signal
to it, exits with its status and removes the directory. Under systemd the launcher
is the main process. The same executable started again by the program (a worker)
reuses the unpacked bundle and runs in that one process, with no launcher of its own.
"""

from __future__ import annotations

import os
import ssl
import sys

FROZEN = bool(getattr(sys, "frozen", False))

# Where distributions keep their CA bundle (the places Go's crypto/x509 looks).
CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Arch, Gentoo
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # CentOS, RHEL 7
    "/etc/ssl/cert.pem",  # Alpine
)


def own_command() -> list[str]:
    """The command that starts this ccproxyd again: the executable itself when frozen, else its module."""
    return [sys.executable] if FROZEN else [sys.executable, "-m", "ccproxyd"]


def own_pids() -> tuple[int, ...]:
    """The pids systemd may know this process by: its own, and a frozen one's launcher (its parent)."""
    return (os.getpid(), os.getppid()) if FROZEN else (os.getpid(),)


def use_system_ca_bundle() -> None:
    """Trust this machine's CA certificates for upstream TLS, as an installed ccproxyd does.

    The bundled OpenSSL looks where the build machine's distribution keeps them (Debian's
    /usr/lib/ssl); elsewhere (Fedora, Alpine, ...) it would find none and refuse every
    HTTPS upstream. SSL_CERT_FILE / SSL_CERT_DIR set by the operator win.
    """
    if not FROZEN or os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return
    default = ssl.get_default_verify_paths()
    if (default.cafile and os.path.isfile(default.cafile)) or (default.capath and os.path.isdir(default.capath)):
        return
    found = next((path for path in CA_BUNDLES if os.path.isfile(path)), None)
    if found:
        os.environ["SSL_CERT_FILE"] = found
