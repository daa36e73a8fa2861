"""Files (PDFs and other documents) through every pair: a Responses ``input_file``, a Chat Completions
``file`` part, a Claude ``document`` block and a Gemini non-image ``inlineData`` reach each upstream in
its own file slot; Ollama has none and the client gets a 400 naming the file; text files stay text."""

from __future__ import annotations

import base64

import aiohttp
import anthropic
import openai
import pytest

from ccproxyd import ir
from tests.conftest import ACCESS_KEY, proxy_config
from tests.emulators.base import Reply

PDF = base64.b64encode(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n").decode()
PDF_URL = f"data:application/pdf;base64,{PDF}"
DOCX = base64.b64encode(b"PK\x03\x04 not really a docx").decode()
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
INPUT_FILE = {"type": "input_file", "filename": "report.pdf", "file_data": PDF_URL}
CLAUDE_DOCUMENT = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}


async def _proxy(start_upstream, start_proxy, protocol: str):
    upstream = await start_upstream(protocol)
    proxy = await start_proxy(proxy_config([upstream]))
    upstream.emulator.script(Reply(text="It is a one-page PDF."))
    return upstream.emulator, proxy


def _openai(proxy, prefix: str = "") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.url + prefix + "/v1", api_key=ACCESS_KEY, max_retries=0)


def _anthropic(proxy) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=proxy.url, api_key=ACCESS_KEY, max_retries=0)


def _sent_file(protocol: str, body: dict):
    """The file part as the upstream received it, in its own protocol's shape."""
    if protocol == "openai":
        return next(p for p in body["messages"][-1]["content"] if p["type"] == "file")
    if protocol == "claude":
        return next(b for b in body["messages"][-1]["content"] if b["type"] == "document")
    if protocol == "gemini":
        return next(p for p in body["contents"][-1]["parts"] if "inlineData" in p)
    return next(p for p in body["input"][-1]["content"] if p["type"] == "input_file")


EXPECTED = {
    "openai": {"type": "file", "file": {"filename": "report.pdf", "file_data": PDF_URL}},
    "claude": {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}, "title": "report.pdf"},
    "gemini": {"inlineData": {"mimeType": "application/pdf", "data": PDF}},
    "responses": {"type": "input_file", "filename": "report.pdf", "file_data": PDF_URL},
}


# ---------------------------------------------------------------- a Responses client's PDF


@pytest.mark.parametrize("protocol", ["openai", "claude", "gemini", "responses"])
async def test_responses_pdf_input_file_reaches_each_upstream_in_its_own_shape(start_upstream, start_proxy, protocol):
    emulator, proxy = await _proxy(start_upstream, start_proxy, protocol)
    async with _openai(proxy) as client:
        r = await client.responses.create(model=f"m-{protocol}", store=False, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What is in this file?"}, INPUT_FILE]}])
    assert r.output_text == "It is a one-page PDF."
    assert _sent_file(protocol, emulator.last.body) == EXPECTED[protocol]


async def test_responses_stream_with_a_pdf_to_a_claude_upstream(start_upstream, start_proxy):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "claude")
    async with _openai(proxy) as client:
        async with client.responses.stream(model="m-claude", store=False, input=[{"role": "user", "content": [
                {"type": "input_text", "text": "Summarise"}, INPUT_FILE]}]) as stream:
            final = await stream.get_final_response()
    assert final.output_text == "It is a one-page PDF."
    assert _sent_file("claude", emulator.last.body) == EXPECTED["claude"]


async def test_a_file_without_a_name_gets_one_from_its_type(start_upstream, start_proxy):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "openai")
    async with _openai(proxy) as client:
        await client.responses.create(model="m-openai", store=False, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Read"}, {"type": "input_file", "file_data": PDF_URL}]}])
    assert _sent_file("openai", emulator.last.body)["file"] == {"filename": "file.pdf", "file_data": PDF_URL}


async def test_the_daemon_process_passes_a_pdf_to_a_gemini_upstream(start_upstream, run_daemon):
    upstream = await start_upstream("gemini")
    upstream.emulator.script(Reply(text="It is a one-page PDF."))
    daemon = run_daemon(proxy_config([upstream]))
    async with openai.AsyncOpenAI(base_url=daemon.url + "/v1", api_key=ACCESS_KEY, max_retries=0) as client:
        r = await client.responses.create(model="m-gemini", store=False, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What is in this file?"}, INPUT_FILE]}])
    assert r.output_text == "It is a one-page PDF."
    assert _sent_file("gemini", upstream.emulator.last.body) == EXPECTED["gemini"]


# ---------------------------------------------------------------- an Anthropic client's document


@pytest.mark.parametrize("protocol", ["openai", "gemini", "responses"])
async def test_anthropic_document_block_reaches_other_upstreams(start_upstream, start_proxy, protocol):
    emulator, proxy = await _proxy(start_upstream, start_proxy, protocol)
    async with _anthropic(proxy) as client:
        msg = await client.messages.create(model=f"m-{protocol}", max_tokens=200, messages=[{"role": "user", "content": [
            CLAUDE_DOCUMENT | {"title": "report.pdf"}, {"type": "text", "text": "Summarise this."}]}])
    assert msg.content[0].text == "It is a one-page PDF."
    assert _sent_file(protocol, emulator.last.body) == EXPECTED[protocol]


async def test_anthropic_document_round_trips_to_claude_unchanged(start_upstream, start_proxy):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "claude")
    document = CLAUDE_DOCUMENT | {"title": "Q3", "context": "finance", "citations": {"enabled": True}, "cache_control": {"type": "ephemeral"}}
    async with _anthropic(proxy) as client:
        await client.messages.create(model="m-claude", max_tokens=200, messages=[{"role": "user", "content": [
            document, {"type": "text", "text": "Summarise this."}]}])
    assert emulator.last.body["messages"][0]["content"][0] == document


async def test_anthropic_text_document_stays_text_for_other_upstreams(start_upstream, start_proxy):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "openai")
    async with _anthropic(proxy) as client:
        await client.messages.create(model="m-openai", max_tokens=200, messages=[{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}},
            {"type": "text", "text": "Summarise this."}]}])
    content = emulator.last.body["messages"][-1]["content"]
    assert "plain notes" in str(content) and "file" not in {p.get("type") for p in content if isinstance(p, dict)}


async def test_a_pdf_inside_a_claude_tool_result_reaches_an_openai_upstream(start_upstream, start_proxy):
    """Chat Completions tool messages take text only: the file follows them in a user message."""
    emulator, proxy = await _proxy(start_upstream, start_proxy, "openai")
    async with _anthropic(proxy) as client:
        await client.messages.create(model="m-openai", max_tokens=200, tools=[{"name": "fetch", "input_schema": {"type": "object"}}], messages=[
            {"role": "user", "content": "Fetch the report"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "fetch", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "here it is"}, CLAUDE_DOCUMENT | {"title": "report.pdf"}]}]}])
    messages = emulator.last.body["messages"]
    assert messages[-2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "here it is"}
    assert _sent_file("openai", emulator.last.body) == EXPECTED["openai"]


# ---------------------------------------------------------------- Chat Completions and Gemini clients


async def test_chat_completions_file_part_reaches_a_claude_upstream(start_upstream, start_proxy):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "claude")
    async with _openai(proxy) as client:
        r = await client.chat.completions.create(model="m-claude", messages=[{"role": "user", "content": [
            {"type": "text", "text": "Summarise"}, {"type": "file", "file": {"filename": "report.pdf", "file_data": PDF_URL}}]}])
    assert r.choices[0].message.content == "It is a one-page PDF."
    assert _sent_file("claude", emulator.last.body) == EXPECTED["claude"]


async def test_gemini_pdf_inline_data_reaches_an_openai_upstream(start_upstream, start_proxy):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "openai")
    body = {"contents": [{"role": "user", "parts": [{"text": "Summarise"}, {"inlineData": {"mimeType": "application/pdf", "data": PDF}}]}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/v1beta/models/m-openai:generateContent", json=body, headers={"x-goog-api-key": ACCESS_KEY}) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
    assert answer["candidates"][0]["content"]["parts"][0]["text"] == "It is a one-page PDF."
    assert _sent_file("openai", emulator.last.body)["file"] == {"filename": "file.pdf", "file_data": PDF_URL}


async def test_gemini_text_inline_data_becomes_text_for_a_claude_upstream(start_upstream, start_proxy):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "claude")
    notes = base64.b64encode(b"meeting at noon").decode()
    body = {"contents": [{"role": "user", "parts": [{"text": "Summarise"}, {"inlineData": {"mimeType": "text/plain", "data": notes}}]}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/v1beta/models/m-claude:generateContent", json=body, headers={"x-goog-api-key": ACCESS_KEY}) as r:
            assert r.status == 200, await r.text()
    blocks = emulator.last.body["messages"][0]["content"]
    assert [b["type"] for b in blocks] == ["text", "text"]
    assert "meeting at noon" in blocks[1]["text"]


# ---------------------------------------------------------------- where a file cannot go


@pytest.mark.parametrize("prefix", ["", "/compat_mode"])
async def test_pdf_to_an_ollama_upstream_is_a_clear_400_naming_the_file(start_upstream, start_proxy, prefix):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "ollama")
    async with _openai(proxy, prefix) as client:
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(model="m-ollama", store=False, input=[{"role": "user", "content": [
                {"type": "input_text", "text": "Read"}, INPUT_FILE]}])
    assert "report.pdf" in e.value.message and "Ollama" in e.value.message
    assert e.value.body["type"] == "invalid_request_error"
    assert not emulator.received


async def test_anthropic_document_to_ollama_is_a_400_in_claude_shape(start_upstream, start_proxy):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "ollama")
    async with _anthropic(proxy) as client:
        with pytest.raises(anthropic.BadRequestError) as e:
            await client.messages.create(model="m-ollama", max_tokens=100, messages=[{"role": "user", "content": [
                CLAUDE_DOCUMENT | {"title": "scan.pdf"}, {"type": "text", "text": "Read"}]}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "scan.pdf" in e.value.body["error"]["message"]
    assert not emulator.received


@pytest.mark.parametrize(("protocol", "accepted"), [("openai", False), ("claude", False), ("gemini", True), ("responses", True)])
async def test_a_non_pdf_document_goes_where_the_upstream_reads_it(start_upstream, start_proxy, protocol, accepted):
    """Chat Completions and Claude read PDFs only; Gemini and the Responses API take other document types."""
    emulator, proxy = await _proxy(start_upstream, start_proxy, protocol)
    part = {"type": "input_file", "filename": "memo.docx", "file_data": f"data:{DOCX_TYPE};base64,{DOCX}"}
    async with _openai(proxy) as client:
        call = client.responses.create(model=f"m-{protocol}", store=False, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Read"}, part]}])
        if accepted:
            await call
            sent = _sent_file(protocol, emulator.last.body)
            assert sent == ({"inlineData": {"mimeType": DOCX_TYPE, "data": DOCX}} if protocol == "gemini" else part)
        else:
            with pytest.raises(openai.BadRequestError) as e:
                await call
            assert "memo.docx" in e.value.message and DOCX_TYPE in e.value.message
            assert not emulator.received


@pytest.mark.parametrize(("content", "param", "words"), [
    ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[1].file.file_data", "file_id"),
    ({"type": "file", "file": {"file_data": "JVBERi0x"}}, "messages[0].content[1].file.file_data", "data URL"),
    ({"type": "file"}, "messages[0].content[1].file", "file"),
])
async def test_bad_chat_completions_file_parts_get_a_clear_400(start_upstream, start_proxy, content, param, words):
    emulator, proxy = await _proxy(start_upstream, start_proxy, "claude")
    async with _openai(proxy) as client:
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model="m-claude", messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, content]}])
    assert e.value.body["param"] == param
    assert words in e.value.body["message"]
    assert not emulator.received


# ---------------------------------------------------------------- counting


def test_estimate_tokens_counts_a_file_by_its_decoded_size():
    data = base64.b64encode(b"x" * 40_000).decode()
    with_file = ir.Request("m", [ir.Message("user", [ir.Text("hi"), ir.File("application/pdf", data, "a.pdf")])])
    without = ir.Request("m", [ir.Message("user", [ir.Text("hi")])])
    assert ir.estimate_tokens(with_file) - ir.estimate_tokens(without) == 10_000


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
async def test_input_tokens_with_a_pdf_counts_it_without_an_upstream_that_counts(start_upstream, start_proxy, protocol):
    """Neither upstream has a counting endpoint: ccproxyd estimates, the file by its decoded size."""
    emulator, proxy = await _proxy(start_upstream, start_proxy, protocol)
    big = base64.b64encode(b"x" * 40_000).decode()
    async with aiohttp.ClientSession() as s:
        async def count(content: list) -> int:
            async with s.post(f"{proxy.url}/v1/responses/input_tokens", headers={"authorization": f"Bearer {ACCESS_KEY}"},
                              json={"model": f"m-{protocol}", "input": [{"role": "user", "content": content}]}) as r:
                assert r.status == 200, await r.text()
                return (await r.json())["input_tokens"]
        text = [{"type": "input_text", "text": "Read"}]
        with_file = await count(text + [{"type": "input_file", "filename": "big.pdf", "file_data": f"data:application/pdf;base64,{big}"}])
        assert with_file - await count(text) == 10_000
