"""The conversion matrix (tests/test_matrix.py) for the Responses API: the official
OpenAI SDK's ``responses.create`` / ``responses.stream`` to each of the five
upstream protocols, and each of the other four SDKs to a Responses upstream."""

from __future__ import annotations

import pytest

from tests.clients import DRIVERS
from tests.conftest import PROTOCOLS, proxy_config
from tests.test_matrix import (  # noqa: F401  (collected here, with this module's pair fixture)
    test_plain_text_and_usage,
    test_reasoning,
    test_tool_round_trip,
    test_two_parallel_tool_calls,
    test_upstream_error_in_the_clients_shape,
)

PAIRS = [("responses", u) for u in (*PROTOCOLS, "responses")] + [(c, "responses") for c in PROTOCOLS]


@pytest.fixture(params=PAIRS, ids=[f"{c}-to-{u}" for c, u in PAIRS])
async def pair(request, start_upstream, start_proxy, tmp_path):
    client_protocol, upstream_protocol = request.param
    upstream = await start_upstream(upstream_protocol)
    proxy = await start_proxy(proxy_config([upstream], server={"state_dir": str(tmp_path)}))
    driver = DRIVERS[client_protocol](proxy.url, f"m-{upstream_protocol}")
    yield driver, upstream.emulator
    await driver.close()
