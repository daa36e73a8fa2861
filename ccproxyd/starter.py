"""The commented starter config ``ccproxyd init`` writes: comments by hand, data by tomli-w."""

from __future__ import annotations

import tomli_w

_SECTIONS = [
    (
        "ccproxyd config. Check it with `ccproxyd --config THIS_FILE check`.\n"
        "${VAR} is read from the environment at start; ${VAR:-default} falls back.\n\n"
        "Access keys clients must present (Authorization: Bearer, x-api-key, x-goog-api-key or ?key=).\n"
        "With no [[keys]] at all, ccproxyd only listens on loopback and asks for no key.",
        {"keys": [{"name": "laptop", "key": "${CCPROXY_KEY:-change-me}"}]},
    ),
    (
        "The listening address; a non-loopback address needs access keys.",
        {"server": {"listen": "127.0.0.1:11435", "active_group": "default"}},
    ),
    (
        "Upstream providers. base_url is what you would give that protocol's official SDK.",
        {
            "providers": {
                "openai": {"protocol": "openai", "base_url": "https://api.openai.com/v1", "api_keys": ["${OPENAI_API_KEY:-}"]},
                "local": {"protocol": "ollama", "base_url": "http://127.0.0.1:11434"},
            }
        },
    ),
    (
        "Groups map model aliases to targets \"provider/model\". /v1/... uses group \"default\";\n"
        "/{group}/v1/... another. Patterns (* ?) match in file order after exact names.",
        {"groups": {"default": {"models": {"gpt-4o": ["openai/gpt-4o"], "local": ["local/qwen3:8b"], "claude-*": ["openai/gpt-4o-mini", "local/qwen3:8b"]}}}},
    ),
]


def starter_config() -> str:
    chunks = []
    for comment, data in _SECTIONS:
        lines = "\n".join(f"# {line}" if line else "#" for line in comment.splitlines())
        chunks.append(f"{lines}\n{tomli_w.dumps(data)}")
    return "\n".join(chunks)
