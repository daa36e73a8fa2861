"""Upstream emulators, one per protocol, written from each provider's documentation.

They do not import ccproxyd: every byte they send is built here from the
protocol's documented shapes, so a test proves ccproxyd agrees with the
protocol rather than with itself.
"""
