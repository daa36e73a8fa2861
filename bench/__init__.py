"""The benchmark: ccproxyd against going direct, a bare pass-through and LiteLLM (``make bench``; docs/performance.md)."""
