"""The URL table × bare / group / compat / group+compat, plus rejects."""

import pytest

from ccproxyd.paths import MethodNotAllowed, PathNotFound, Route, client_hint, parse_path

TABLE = [
    ("POST", "/v1/chat/completions", "openai", "chat"),
    ("GET", "/v1/models", "openai", "models"),
    ("POST", "/v1/messages", "claude", "chat"),
    ("POST", "/v1/messages/count_tokens", "claude", "count_tokens"),
    ("GET", "/v1beta/models", "gemini", "models"),
    ("POST", "/v1beta/models/gemini-2.5-flash:generateContent", "gemini", "chat"),
    ("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "gemini", "chat"),
    ("POST", "/v1beta/models/gemini-2.5-flash/generateContent", "gemini", "chat"),
    ("POST", "/v1beta/models/gemini-2.5-flash:countTokens", "gemini", "count_tokens"),
    ("POST", "/v1/models/gemini-2.5-flash:generateContent", "gemini", "chat"),
    ("POST", "/v1/models/gemini-2.5-flash:streamGenerateContent", "gemini", "chat"),
    ("POST", "/api/chat", "ollama", "chat"),
    ("GET", "/api/tags", "ollama", "models"),
    ("POST", "/api/show", "ollama", "show"),
    ("GET", "/api/version", "ollama", "version"),
]
PREFIXES = [("", None, False), ("/work", "work", False), ("/compat_mode", None, True), ("/compat", None, True),
            ("/work/compat_mode", "work", True), ("/g-2.x/compat", "g-2.x", True)]


@pytest.mark.parametrize("prefix,group,compat", PREFIXES)
@pytest.mark.parametrize("method,path,protocol,action", TABLE)
def test_every_endpoint_under_every_prefix(method, path, protocol, action, prefix, group, compat):
    route = parse_path(method, prefix + path, {})
    assert (route.protocol, route.action, route.group, route.compat) == (protocol, action, group, compat)


def test_gemini_model_and_stream_come_from_the_path():
    route = parse_path("POST", "/g/v1beta/models/gemini-2.5-pro:streamGenerateContent", {"alt": "sse"})
    assert route == Route("gemini", "chat", "g", False, model="gemini-2.5-pro", stream=True, gemini_sse=True)
    route = parse_path("POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent", {})
    assert route.stream and not route.gemini_sse
    assert parse_path("POST", "/v1beta/models/x:generateContent", {}).stream is False


def test_shared_model_list_answers_in_the_asking_sdks_shape():
    assert parse_path("GET", "/v1/models", {}, client_hint({"x-goog-api-key": "k"})).protocol == "gemini"
    assert parse_path("GET", "/v1/models", {}, client_hint({"anthropic-version": "2023-06-01"})).protocol == "claude"
    assert parse_path("GET", "/v1/models", {}, client_hint({})).protocol == "openai"
    assert parse_path("POST", "/v1/messages", {}, "gemini").protocol == "claude"


def test_claude_code_beta_query_is_accepted():
    assert parse_path("POST", "/v1/messages", {"beta": "true"}).action == "chat"


def test_head_is_get():
    assert parse_path("HEAD", "/", {}).action == "root"


@pytest.mark.parametrize("path,action", [("/", "root"), ("/healthz", "health"), ("/metrics", "metrics"),
                                         ("/sse", "mcp_sse"), ("/sse/messages", "mcp_sse"), ("/mcp", "mcp_http")])
def test_service_paths(path, action):
    assert parse_path("GET", path, {}).action == action


@pytest.mark.parametrize("path,protocol", [
    ("/v2/chat/completions", "openai"),
    ("/nope", "openai"),
    ("/v1/messages/extra", "claude"),
    ("/v1beta/models/x:unknownMethod", "gemini"),
    ("/api/nonexistent", "ollama"),
    ("/a/b/v1/chat/completions", "openai"),
    ("/v1/v1/chat/completions", "openai"),  # a reserved segment is never a group
    ("/api/compat_mode/api/chat", "ollama"),
])
def test_unknown_paths_are_404_in_the_shape_they_look_like(path, protocol):
    with pytest.raises(PathNotFound) as e:
        parse_path("POST", path, {})
    assert e.value.protocol == protocol


def test_a_cors_preflight_matches_any_endpoint():
    assert parse_path("OPTIONS", "/g/v1/messages", {}).action == "chat"


def test_wrong_method_is_told_apart():
    with pytest.raises(MethodNotAllowed) as e:
        parse_path("GET", "/v1/messages", {})
    assert e.value.protocol == "claude"


def test_remembered_routes_still_follow_the_query_and_refusals_still_raise():
    from multidict import MultiDict, MultiDictProxy

    path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    for _ in range(2):  # the second round is answered from the cache
        assert parse_path("POST", path, MultiDictProxy(MultiDict({"alt": "sse"}))).gemini_sse
        assert not parse_path("POST", path, MultiDictProxy(MultiDict())).gemini_sse
        assert not parse_path("POST", path, None).gemini_sse
        with pytest.raises(MethodNotAllowed):
            parse_path("GET", "/v1/chat/completions", {})
        with pytest.raises(PathNotFound):
            parse_path("POST", "/v1/nothing-here", {})
