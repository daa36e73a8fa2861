"""Config validation: every error class reported as file: key.path: message, together."""

import pytest

from ccproxyd.config import ConfigError, load_config, parse_config

BASE = {
    "providers": {"up": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    "groups": {"default": {"models": {"m": ["up/model-a"]}}},
}


def errors_of(data, env=None):
    with pytest.raises(ConfigError) as e:
        parse_config(data, "ccproxy.toml", env=env or {})
    return e.value.errors


def with_(**parts):
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    data.update(parts)
    return data


def test_valid_config_parses_into_frozen_dataclasses():
    config = parse_config(BASE, "x.toml", env={})
    assert config.providers["up"].base_url == "http://127.0.0.1:9/v1"
    assert config.groups["default"].aliases[0].targets[0].model == "model-a"
    with pytest.raises(AttributeError):
        config.server.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_unknown_protocol():
    errs = errors_of(with_(providers={"up": {"protocol": "grpc", "base_url": "http://x"}}))
    assert errs == ["ccproxy.toml: providers.up.protocol: must be one of openai, claude, gemini, ollama, responses, demo; got 'grpc'"]


def test_target_naming_a_missing_provider():
    errs = errors_of(with_(groups={"default": {"models": {"m": ["nope/x"]}}}))
    assert errs == ["ccproxy.toml: groups.default.models.m[0]: provider 'nope' does not exist (providers: up)"]


def test_missing_env_var():
    data = with_(providers={"up": {"protocol": "openai", "base_url": "http://x", "api_keys": ["${MISSING_KEY}"]}})
    assert errors_of(data) == ["ccproxy.toml: providers.up.api_keys[0]: environment variable MISSING_KEY is not set"]


def test_env_var_expansion_and_default():
    data = with_(providers={"up": {"protocol": "openai", "base_url": "http://x", "api_keys": ["${K}", "${L:-fallback}", "${M:-}"]}})
    config = parse_config(data, env={"K": "secret"})
    assert config.providers["up"].api_keys == ("secret", "fallback")


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:99999", ":80", "host:port"])
def test_bad_listen_address(listen):
    errs = errors_of(with_(server={"listen": listen}))
    assert len(errs) == 1 and errs[0].startswith("ccproxy.toml: server.listen: expected HOST:PORT")


def test_non_loopback_listen_needs_keys():
    errs = errors_of(with_(server={"listen": "0.0.0.0:8080"}))
    assert errs == ["ccproxy.toml: server.listen: 0.0.0.0:8080 is not a loopback address; define [[keys]] before listening on the network"]
    parse_config(with_(server={"listen": "0.0.0.0:8080"}, keys=[{"name": "a", "key": "k"}]), env={})


def test_unknown_keys_everywhere():
    data = with_(server={"lisen": "x"}, extra=1)
    data["providers"] = {"up": {"protocol": "openai", "base_url": "http://x", "apikeys": []}}
    data["groups"] = {"default": {"models": {"m": ["up/x"]}, "stratgy": "x"}}
    errs = errors_of(data)
    assert "ccproxy.toml: extra: unknown key" in errs
    assert "ccproxy.toml: server.lisen: unknown key" in errs
    assert "ccproxy.toml: providers.up.apikeys: unknown key" in errs
    assert "ccproxy.toml: groups.default.stratgy: unknown key" in errs


def test_wrong_types_and_values():
    errs = errors_of(with_(server={"workers": "two", "log_format": "xml", "max_body_bytes": True}))
    assert "ccproxy.toml: server.workers: expected an integer, got str" in errs
    assert "ccproxy.toml: server.log_format: must be one of text, json; got 'xml'" in errs
    assert "ccproxy.toml: server.max_body_bytes: expected an integer, got a boolean" in errs


def test_json_depth_limit_is_bounded():
    assert errors_of(with_(server={"max_json_depth": 500})) == ["ccproxy.toml: server.max_json_depth: must be between 8 and 200 (deeper JSON cannot be re-encoded)"]


def test_reserved_group_names():
    errs = errors_of(with_(groups={"v1": {"models": {"m": ["up/x"]}}, "switch": {"models": {}}}))
    assert any("groups.v1" in e and "reserved" in e for e in errs)
    assert any("groups.switch" in e and "reserved" in e for e in errs)


def test_all_errors_reported_together():
    data = {"server": {"listen": "bad"}, "providers": {"a": {"protocol": "x"}}, "groups": {"default": {"models": {"m": ["zz/y"]}}}}
    assert len(errors_of(data)) >= 4


def test_base_url_conventions_are_normalised():
    data = {"providers": {
        "c": {"protocol": "claude", "base_url": "https://api.anthropic.com/v1/"},
        "g": {"protocol": "gemini", "base_url": "https://generativelanguage.googleapis.com/v1beta"},
        "o": {"protocol": "openai", "base_url": "https://api.openai.com/v1/"},
    }}
    config = parse_config(data, env={})
    assert config.providers["c"].base_url == "https://api.anthropic.com"
    assert config.providers["g"].base_url == "https://generativelanguage.googleapis.com"
    assert config.providers["o"].base_url == "https://api.openai.com/v1"


def test_weighted_targets_and_model_with_slashes():
    data = with_(groups={"default": {"models": {"m": {"targets": [{"target": "up/org/model:tag", "weight": 3}], "strategy": "weighted"}}}})
    alias = parse_config(data, env={}).groups["default"].aliases[0]
    assert alias.strategy == "weighted" and alias.targets[0].model == "org/model:tag" and alias.targets[0].weight == 3


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path / "missing.toml"))
    assert e.value.errors == [f"{tmp_path / 'missing.toml'}: file not found"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nlisten=1")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    assert e.value.errors[0].startswith(f"{bad}: not valid TOML")


def test_example_config_is_valid():
    config = load_config("etc/ccproxy.toml", env={})
    assert "default" in config.groups and config.server.listen == "127.0.0.1:11435"


def test_active_group_must_exist_when_given():
    errs = errors_of(with_(server={"active_group": "nope"}))
    assert errs == ["ccproxy.toml: server.active_group: group 'nope' does not exist"]
