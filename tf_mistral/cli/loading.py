"""The tokenizer and model of a checkpoint folder, for `generate`, `chat` and `classify`."""

import os

from tf_mistral.cli.shared import UsageError
from tf_mistral.config import MistralConfig
from tf_mistral.silence import silenced_stderr
from tf_mistral.tokenizer import MistralTokenizer, load_tokenizer


def checkpoint_tokenizer(checkpoint: str | None, vocab_size: int | None = None) -> MistralTokenizer:
    """`load_tokenizer(checkpoint=...)` without sentencepiece's start-up line on stderr."""
    with silenced_stderr():  # sentencepiece's "precompiled_charsmap is empty" line
        return load_tokenizer(checkpoint=checkpoint, vocab_size=vocab_size)


def load_checkpoint(model_class: type, checkpoint: str | os.PathLike | None, dtype: str | None,
                    quantize: str = "none") -> tuple:
    """(tokenizer, model) of a checkpoint folder, Keras int8 when `quantize` is "int8". The
    tokenizer comes first, checked against the vocab_size of config.json, so that one that does
    not fit fails before the weights load."""
    if not checkpoint:
        raise UsageError("--checkpoint DIR is required (a Hugging Face Mistral folder)")
    tokenizer = checkpoint_tokenizer(checkpoint, MistralConfig.from_json_file(checkpoint).vocab_size)
    quantize = None if quantize == "none" else quantize
    return tokenizer, model_class.from_pretrained(checkpoint, dtype=dtype, quantize=quantize)
