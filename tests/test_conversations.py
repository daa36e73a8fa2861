"""The stored-conversation database: per owner, gone after the TTL, oldest dropped past the size bound."""

from __future__ import annotations

import time

from ccproxyd.conversations import ConversationStore


async def test_records_are_per_owner(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3", 3600, 1 << 20)
    await store.put("alice", "resp_1", {"items": [1, 2], "response": {"id": "resp_1"}})
    assert await store.get("alice", "resp_1") == {"items": [1, 2], "response": {"id": "resp_1"}}
    assert await store.get("bob", "resp_1") is None
    assert not await store.delete("bob", "resp_1")
    assert await store.delete("alice", "resp_1")
    assert await store.get("alice", "resp_1") is None
    assert (tmp_path / "c.sqlite3").stat().st_mode & 0o777 == 0o600
    store.close()


async def test_expired_records_are_gone(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3", 3600, 1 << 20)
    await store.put("k", "old", {"v": 1})
    store._conn().execute("UPDATE stored SET created = ? WHERE id = 'old'", (time.time() - 3601,))  # an hour and a second ago
    assert await store.get("k", "old") is None
    store._pruned = 0  # the next write sweeps
    await store.put("k", "new", {"v": 2})
    assert [r[0] for r in store._conn().execute("SELECT id FROM stored")] == ["new"]
    store.close()


async def test_oldest_go_first_past_the_size_bound(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3", 0, 5000)
    noise = __import__("os").urandom(3000).hex()  # hex of random bytes compresses only to about half: ~3 kB a record
    for i in range(3):
        await store.put("k", f"r{i}", {"blob": noise + str(i)})
    kept = [r[0] for r in store._conn().execute("SELECT id FROM stored ORDER BY created")]
    assert kept == ["r2"]
    assert await store.get("k", "r2") is not None
    store.close()


async def test_a_record_over_the_bound_is_not_kept(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3", 0, 100)
    await store.put("k", "big", {"blob": __import__("os").urandom(200).hex()})
    assert await store.get("k", "big") is None
    store.close()


async def test_an_unusable_state_dir_is_a_503_not_a_crash(start_upstream, start_proxy, tmp_path):
    import aiohttp

    from tests.conftest import ACCESS_KEY, proxy_config

    (tmp_path / "file").write_text("not a directory")
    upstream = await start_upstream("openai")
    proxy = await start_proxy(proxy_config([upstream], server={"state_dir": str(tmp_path / "file" / "state")}))
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {ACCESS_KEY}"}) as s:
        async with s.post(proxy.url + "/v1/responses", json={"model": "m-openai", "input": "hi"}) as r:
            assert r.status == 200  # storing fails quietly (logged), the answer still goes out
        async with s.post(proxy.url + "/v1/responses", json={"model": "m-openai", "input": "hi", "previous_response_id": "resp_x"}) as r:
            assert r.status == 503 and "stored conversations" in (await r.json())["error"]["message"]
        async with s.get(proxy.url + "/v1/responses/resp_x") as r:
            assert r.status == 503
