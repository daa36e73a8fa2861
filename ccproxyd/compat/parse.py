"""Finding tool calls in model text, incrementally.

:class:`CallScanner` is fed text in arbitrary pieces (down to one character)
and returns prose, parsed calls and broken calls in order. It holds back only a
suffix that could be the start of a call tag, so prose flows through as it
arrives, and it returns a call as soon as its closing tag is complete.

Accepted call formats (all inside one tag per call):

* Hermes/Qwen, the one we teach: ``<tool_call>{"name": N, "arguments": {...}}</tool_call>``
  (also ``"parameters"`` for ``"arguments"``, arguments given as a JSON string, or a list of calls);
* Qwen3-Coder: ``<tool_call><function=N><parameter=P>value</parameter></function></tool_call>``;
* ccproxy: ``<cs:tool_use><name>N</name><args><arg name="P" type="T">value</arg></args></cs:tool_use>``
  with XML-escaped values, arrays and objects as JSON.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable

import orjson

from .. import ir
from .schema import coerce

log = logging.getLogger("ccproxyd.compat")

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
CS_OPEN, CS_CLOSE = "<cs:tool_use>", "</cs:tool_use>"
CLOSE_OF = {HERMES_OPEN: HERMES_CLOSE, CS_OPEN: CS_CLOSE}
_OPEN = re.compile("|".join(re.escape(tag) for tag in CLOSE_OF))
LONGEST_TAG = max(len(tag) for tag in CLOSE_OF)

_IN_STRING_STOP = re.compile(r'["\\]')
_OUT_STRING_STOP = re.compile(r'"|' + re.escape(HERMES_CLOSE))
_CS_NAME = re.compile(r"<name>(.*?)</name>", re.S)
_CS_ARGS = re.compile(r"<args\s*>(.*?)</args\s*>", re.S)
_CS_ARG = re.compile(r"<arg\b([^>]*?)(?:/>|>(.*?)</arg\s*>)", re.S)
_ATTR = re.compile(r'([\w:-]+)\s*=\s*"([^"]*)"')
_ENTITY = re.compile(r"&(lt|gt|amp|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}
_CODER_FUNCTION = re.compile(r"^<function=([^>\n]+)>(.*?)(?:</function>\s*)?$", re.S)
_CODER_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.S)


@dataclass(slots=True)
class ParsedCall:
    name: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class BrokenCall:
    """Call text that could not be used; it goes to the client as plain text."""

    text: str
    reason: str


Item = str | ParsedCall | BrokenCall


class _Broken(ValueError):
    pass


class _Fences:
    """Whether the prose seen so far is inside a ``` code fence (tags there are not calls)."""

    __slots__ = ("inside", "line_blank", "ticks")

    def __init__(self) -> None:
        self.inside = False
        self.line_blank = True  # only spaces/tabs since the last newline
        self.ticks = 0  # backticks in a run that began a line

    def feed(self, text: str) -> None:
        if "`" not in text and not self.ticks:
            tail = text.rsplit("\n", 1)
            self.line_blank = (len(tail) == 2 or self.line_blank) and not tail[-1].strip(" \t")
            return
        for ch in text:
            if ch == "`" and (self.ticks or self.line_blank):
                self.line_blank = False
                self.ticks += 1
                if self.ticks == 3:
                    self.inside = not self.inside
            elif ch == "\n":
                self.line_blank, self.ticks = True, 0
            elif ch in " \t":
                self.ticks = 0
            else:
                self.line_blank, self.ticks = False, 0


class CallScanner:
    """Splits model text into prose and tool calls; one instance per response."""

    def __init__(self, tools: Iterable[ir.Tool], warn: bool = True) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.warn = warn
        self.buf = ""
        self.open_tag: str | None = None  # set while inside a call
        self.searched = 0  # call body before this index holds no closing tag
        self.json_body: bool | None = None  # a <tool_call> body that starts as JSON, once known
        self.in_string = False  # JSON-aware search: inside a string literal
        self.fences = _Fences()
        self.last_char = ""

    @property
    def pending(self) -> bool:
        return bool(self.buf) or self.open_tag is not None

    def feed(self, text: str) -> list[Item]:
        self.buf += text
        return self._scan(final=False)

    def finish(self) -> list[Item]:
        """Everything still held: partial tags become prose, an unclosed call comes back as text."""
        return self._scan(final=True)

    # ------------------------------------------------------------ scanning

    def _scan(self, final: bool) -> list[Item]:
        out: list[Item] = []
        while True:
            if self.open_tag is None:
                match = _OPEN.search(self.buf)
                if match is None:
                    keep = 0 if final else _partial_tag(self.buf)
                    self._prose(self.buf[: len(self.buf) - keep], out)
                    self.buf = self.buf[len(self.buf) - keep :]
                    if self.fences.inside and self.buf:  # no tag can start inside a fence
                        self._prose(self.buf, out)
                        self.buf = ""
                    return out
                self._prose(self.buf[: match.start()], out)
                self.buf = self.buf[match.end() :]
                if self.fences.inside or self.last_char == "`":  # shown in code, not called
                    self._prose(match.group(), out)
                    continue
                self.open_tag, self.searched, self.json_body, self.in_string = match.group(), 0, None, False
                continue
            close = CLOSE_OF[self.open_tag]
            end = self._find_close(close)
            if end < 0 and final:
                end = self.buf.find(close)  # JSON never balanced: fall back to the first closing tag
                if end < 0:
                    self._broken(self.open_tag + self.buf, "unclosed tool call at end of reply", out)
                    self.open_tag, self.buf = None, ""
                    continue
            if end < 0:
                return out
            body, tag = self.buf[:end], self.open_tag
            self.buf = self.buf[end + len(close) :]
            self.open_tag = None
            self._call(tag, body, out)

    def _prose(self, text: str, out: list[Item]) -> None:
        if text:
            self.fences.feed(text)
            self.last_char = text[-1]
            if out and isinstance(out[-1], str):
                out[-1] += text
            else:
                out.append(text)

    def _broken(self, text: str, reason: str, out: list[Item]) -> None:
        if self.warn:
            log.warning("compat: tool call returned as text (%s): %.300s", reason, text)
        self.fences.feed(text)
        self.last_char = text[-1]
        out.append(BrokenCall(text, reason))

    def _find_close(self, close: str) -> int:
        """Index of the call's closing tag in ``buf``, or -1; resumes where the last search stopped."""
        if self.open_tag == HERMES_OPEN:
            if self.json_body is None:
                head = self.buf.lstrip()
                if not head:
                    return -1
                self.json_body = head[0] in "{["
            if self.json_body:
                return self._find_close_json()
        end = self.buf.find(close, self.searched)
        if end < 0:
            self.searched = max(self.searched, len(self.buf) - len(close) + 1)
        return end

    def _find_close_json(self) -> int:
        """Like ``_find_close`` but skips closing tags inside JSON strings (a call that writes one)."""
        i, buf = self.searched, self.buf
        while True:
            if self.in_string:
                m = _IN_STRING_STOP.search(buf, i)
                if m is None:
                    self.searched = len(buf)
                    return -1
                if m.group() == "\\":
                    if m.end() >= len(buf):
                        self.searched = m.start()
                        return -1
                    i = m.end() + 1
                    continue
                self.in_string, i = False, m.end()
                continue
            m = _OUT_STRING_STOP.search(buf, i)
            if m is None:
                self.searched = max(i, len(buf) - len(HERMES_CLOSE) + 1)
                return -1
            if m.group() == '"':
                self.in_string, i = True, m.end()
                continue
            return m.start()

    # ------------------------------------------------------------ one call

    def _call(self, open_tag: str, body: str, out: list[Item]) -> None:
        raw = open_tag + body + CLOSE_OF[open_tag]
        try:
            found = parse_cs_body(body) if open_tag == CS_OPEN else parse_tool_call_body(body)
            calls = [self._check(name, arguments) for name, arguments in found]
        except _Broken as err:
            self._broken(raw, str(err), out)
            return
        out.extend(calls)

    def _check(self, name: str, arguments: dict[str, Any]) -> ParsedCall:
        tool = self.tools.get(name)
        if tool is None:
            raise _Broken(f"unknown tool {name!r}")
        schema = tool.parameters if isinstance(tool.parameters, dict) else {}
        arguments = coerce(arguments, schema)
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        missing = [r for r in required if r not in arguments]
        if missing:
            raise _Broken(f"{name}: missing required argument(s) {', '.join(map(str, missing))}")
        return ParsedCall(name, arguments)


def _partial_tag(buf: str) -> int:
    """Length of the longest suffix of ``buf`` that an opening tag starts with."""
    i = buf.find("<", max(0, len(buf) - LONGEST_TAG + 1))
    while i >= 0:
        tail = buf[i:]
        if any(tag.startswith(tail) for tag in CLOSE_OF):
            return len(tail)
        i = buf.find("<", i + 1)
    return 0


# ---------------------------------------------------------------- call bodies


def parse_tool_call_body(body: str) -> list[tuple[str, dict[str, Any]]]:
    """The inside of ``<tool_call>``: Hermes JSON (one call or a list) or Qwen3-Coder XML."""
    text = body.strip()
    if text.startswith("```"):  # some models fence the JSON inside the tag
        text = text.strip("`").removeprefix("json").strip()
    if text.startswith("<function="):
        return [_parse_coder(text)]
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise _Broken(f"invalid JSON ({err})") from None
    return [_hermes_call(item) for item in (value if isinstance(value, list) else [value])]


def _hermes_call(item: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(item, dict) and isinstance(item.get("function"), dict):
        item = item["function"]  # {"type": "function", "function": {...}} echoed from OpenAI docs
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise _Broken('a tool call needs a JSON object with a "name"')
    arguments = item.get("arguments", item.get("parameters"))
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError as err:
            raise _Broken(f"invalid JSON in arguments ({err})") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise _Broken('"arguments" must be a JSON object')
    return item["name"].strip(), arguments


def _parse_coder(text: str) -> tuple[str, dict[str, Any]]:
    m = _CODER_FUNCTION.match(text)
    if m is None:
        raise _Broken("malformed <function=...> call")
    arguments: dict[str, Any] = {}
    for p in _CODER_PARAMETER.finditer(m.group(2)):
        value = p.group(2)
        value = value[1:] if value.startswith("\n") else value
        arguments[p.group(1).strip()] = value[:-1] if value.endswith("\n") else value
    return m.group(1).strip(), arguments


def parse_cs_body(body: str) -> list[tuple[str, dict[str, Any]]]:
    """The inside of ``<cs:tool_use>``: ``<name>`` and typed ``<arg>`` elements."""
    name = _CS_NAME.search(body)
    if name is None:
        raise _Broken("<cs:tool_use> without <name>")
    arguments: dict[str, Any] = {}
    args = _CS_ARGS.search(body)
    for m in _CS_ARG.finditer(args.group(1) if args else ""):
        attrs = dict(_ATTR.findall(m.group(1)))
        if "name" not in attrs:
            raise _Broken("<arg> without a name")
        arg_name = unescape(attrs["name"])
        arguments[arg_name] = _typed(unescape(m.group(2) or ""), attrs.get("type"), arg_name)
    return [(unescape(name.group(1)).strip(), arguments)]


def _typed(text: str, declared: str | None, name: str) -> Any:
    """An ``<arg>`` value read as its ``type`` attribute says; schema coercion follows."""
    if declared in ("array", "object"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as err:
            raise _Broken(f"invalid JSON in argument {name!r} ({err})") from None
    if declared == "null":
        return None
    if declared in ("integer", "number", "boolean"):
        return coerce(text, {"type": declared})
    return text


def unescape(text: str) -> str:
    """XML entities only; a bare ``&`` a model forgot to escape stays as written."""
    if "&" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref[0] != "#":
            return _ENTITIES[ref]
        code = int(ref[2:], 16) if ref[1] in "xX" else int(ref[1:])
        return chr(code) if 0 < code <= 0x10FFFF else m.group()

    return _ENTITY.sub(one, text)


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def scan_text(text: str, tools: Iterable[ir.Tool]) -> list[Item]:
    """A whole text at once (history inspection)."""
    scanner = CallScanner(tools, warn=False)
    return scanner.feed(text) + scanner.finish()
