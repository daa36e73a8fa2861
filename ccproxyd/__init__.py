"""ccproxyd: one daemon that lets any chat client talk to any chat upstream."""

__version__ = "0.1.0"
