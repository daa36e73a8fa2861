"""Files a client attaches (a PDF, a text file, an image given as a file), one rule for every adapter.

Decoding: images become :class:`ir.Image` (every upstream takes those), text files become
:class:`ir.Text` wrapped in a ``<file>`` tag (every upstream reads text, and Chat Completions and
Claude have no slot for a ``.txt``/``.csv`` file), anything else becomes :class:`ir.File`. Encoding:
each adapter sends an ``ir.File`` in its own slot or refuses it with :func:`refuse`, a 400 in the
client's shape that names the file, rather than letting the upstream fail on it.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes

import orjson

from .. import ir
from ..errors import ClientError
from .fields import split_data_url

PDF = "application/pdf"
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/x-yaml", "application/yaml"})


def is_text(media_type: str) -> bool:
    return media_type.startswith("text/") or media_type in _TEXT_TYPES


def decode_file(media_type: str, data: str, filename: str | None, where: str) -> ir.Part:
    """An inline file (base64 ``data``) as the part the unified model carries for it."""
    media_type = media_type.lower()
    if media_type.startswith("image/"):
        return ir.Image(media_type, data)
    if is_text(media_type):
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8", "replace")
        except binascii.Error:
            raise ClientError(f"{where} is not valid base64", param=where) from None
        return ir.Text(f"<file name={orjson.dumps(filename or 'file').decode()}>\n{text}\n</file>")
    return ir.File(media_type, data, filename)


def decode_data_url(data: str | None, filename: str | None, where: str, elsewhere: str) -> ir.Part:
    """OpenAI's ``file_data`` (a base64 data URL) as a part; ``elsewhere`` names the other ways a client can
    give a file (``file_id``...), which ccproxyd cannot fetch."""
    inline = split_data_url(data) if data else None
    if inline is None:
        kind = "not a base64 data URL" if data else f"given by {elsewhere}"
        raise ClientError(f"{where}: the file ({kind}) cannot be passed on; ccproxyd takes files as base64 data URLs in file_data",
                          param=f"{where}.file_data")
    return decode_file(inline[0], inline[1], filename, f"{where}.file_data")


def data_url(file: ir.File) -> str:
    return f"data:{file.media_type};base64,{file.data}"


def filename(file: ir.File) -> str:
    """The file's name, or one made from its type (OpenAI wants a name beside ``file_data``)."""
    return file.filename or "file" + (mimetypes.guess_extension(file.media_type) or "")


def refuse(file: ir.File, upstream: str, takes: str) -> ClientError:
    return ClientError(f"the file {filename(file)!r} ({file.media_type}) cannot be sent to this model: "
                       f"{upstream} takes {takes}", param="file")
