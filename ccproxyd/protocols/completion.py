"""Prompt completions (Ollama ``/api/generate``, OpenAI ``/v1/completions``) as chat turns.

A chat upstream has no prompt endpoint, so the prompt becomes one user
message. With a ``suffix`` (fill-in-the-middle, sent by editor autocomplete)
the message spells the task out in :data:`FIM_TEMPLATE`: the model is asked
for the missing middle only.
"""

from __future__ import annotations

from .. import ir

FIM_TEMPLATE = (
    "Fill in the missing text at <FILL_HERE> in the text below. Answer with the missing text only, "
    "exactly as it should be inserted: no explanation, no code fences, nothing from before or after it.\n\n"
    "{prompt}<FILL_HERE>{suffix}"
)


def prompt_message(prompt: str, suffix: str | None, images: list[ir.Image] | None = None) -> ir.Message:
    """The prompt (with its suffix, when there is one) as the user turn a chat upstream gets."""
    text = FIM_TEMPLATE.format(prompt=prompt, suffix=suffix) if suffix else prompt
    parts: list[ir.Part] = [ir.Text(text)] if text else []
    return ir.Message("user", parts + list(images or ()))
