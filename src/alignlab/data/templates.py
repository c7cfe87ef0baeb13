"""Turn prompts and completions into the exact text the model sees.

Text prompts and completions pass through unchanged. Conversations are rendered with the
tokenizer's own chat template when it has one (`tokenizer.chat_template`), otherwise with
`DEFAULT_CHAT_TEMPLATE`.

The completion of a conversation is rendered as "the full conversation minus the rendered
prompt", so prompt text + completion text is exactly what the template produces for the whole
conversation, and the model is trained on the same text it will be asked to continue. A trailing
EOS that the template writes is removed from the completion: tokenization appends the EOS token
itself, and it must appear exactly once.
"""

from __future__ import annotations

from typing import Any

#: Chat template used when the tokenizer has none. Each message becomes::
#:
#:     <|role|>
#:     content
#:
#: and the generation prompt is ``<|assistant|>`` followed by a newline. It writes no EOS: the end
#: of an assistant message is marked by the tokenizer's EOS token, which tokenization appends.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def chat_template_of(tokenizer: Any) -> str:
    """The tokenizer's own chat template, or DEFAULT_CHAT_TEMPLATE when it has none."""
    return getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def render_prompt(tokenizer: Any, prompt: str | list[dict]) -> str:
    """The prompt as text, ending where the model's answer begins (with the generation prompt)."""
    if isinstance(prompt, str):
        return prompt
    return _apply(tokenizer, prompt, add_generation_prompt=True)


def render_completion(
    tokenizer: Any,
    prompt: str | list[dict],
    completion: str | list[dict],
    rendered_prompt: str | None = None,
) -> str:
    """The completion as text that follows `render_prompt(tokenizer, prompt)`, without a final EOS.

    `rendered_prompt` may pass in `render_prompt`'s result when the caller has it already.
    """
    if isinstance(completion, str):
        if not isinstance(prompt, str):
            raise TypeError("a text completion needs a text prompt, not a list of messages")
        return completion
    if isinstance(prompt, str):
        raise TypeError("a conversational completion needs a conversational prompt (a list of messages)")
    if rendered_prompt is None:
        rendered_prompt = render_prompt(tokenizer, prompt)
    rendered_full = _apply(tokenizer, list(prompt) + list(completion), add_generation_prompt=False)
    if not rendered_full.startswith(rendered_prompt):
        raise ValueError(
            "the chat template does not render the prompt as a prefix of the full conversation, so "
            "the completion cannot be separated from it; rendered prompt ends "
            f"{rendered_prompt[-60:]!r}, full conversation at that point reads "
            f"{rendered_full[len(rendered_prompt) - 60:len(rendered_prompt) + 20]!r}"
        )
    return strip_trailing_eos(tokenizer, rendered_full[len(rendered_prompt):])


def strip_trailing_eos(tokenizer: Any, text: str) -> str:
    """Remove an EOS string the template put at the end, with any whitespace after it.

    Templates such as ChatML write ``<|im_end|>\\n`` after each message; when ``<|im_end|>`` is
    the EOS token, the model should learn to stop right at it, so the newline goes too.
    """
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        return text
    trimmed = text.rstrip()
    if trimmed.endswith(eos):
        return trimmed[: -len(eos)]
    return text


def _apply(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    rendered = tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template_of(tokenizer),
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )
    if not isinstance(rendered, str):  # defensive: some versions wrap a single rendering in a list
        rendered = rendered[0]
    return rendered
