"""Tool compatibility mode: function calling for models that have none.

The dispatcher calls two functions and nothing else:

* :func:`prepare_request` takes the native tool fields out of a request and
  teaches the model a text call format in the prompt (history included);
* :func:`parse_stream` turns the model's call text back into native tool-call
  events, streaming or not.

The taught format, the accepted formats and the cost are described in docs/compat.md.
"""

from .render import instructions, prepare_request, render_call
from .stream import parse_stream

__all__ = ["instructions", "parse_stream", "prepare_request", "render_call"]
