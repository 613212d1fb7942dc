"""A generation request, the same for every runtime: Keras `generate`, the SavedModel signatures,
`TFLiteRunner` and `backends` read their prompt, new-token count, sampling mode, padding id and
streamer through these functions, so a request means one thing everywhere.

Numpy in, numpy out, except `left_align`, which is TensorFlow ops (eager or inside a graph).
"""

from collections.abc import Callable, Sequence
import numbers
from typing import Any

import numpy as np
import tensorflow as tf

from tf_mistral.generation.sampling import SamplingMode

DEFAULT_NEW_TOKENS = 20  # HF's default when neither max_new_tokens nor max_length is given


def as_int_matrix(value: Any, name: str) -> np.ndarray:
    """int32 numpy `[batch, length]` from a list, numpy array or tensor (`[length]` is one row);
    ValueError naming `name` for anything else."""
    if value is None:
        raise ValueError(f"{name} is required")
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) and array.size:
        raise ValueError(f"{name} must be integer ids of shape [batch, length], got {array.dtype} {array.shape}")
    return array.astype(np.int32)


def check_attention_mask(attention_mask: np.ndarray) -> None:
    """Raises ValueError unless the int `[batch, length]` mask holds only 0 (padding) and 1 (token):
    `generate` counts a row's ones to place its padding, so another value would misplace it (the
    SavedModel reads any non-zero value as 1)."""
    bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
    if bad.size:
        raise ValueError(
            f"attention_mask must hold only 0 (padding) and 1 (token), got {bad[0]}: pass a 0/1 mask "
            "(e.g. `(mask != 0).astype(int)`)"
        )


def check_prompt(input_ids: np.ndarray, attention_mask: np.ndarray, vocab_size: int) -> None:
    """Raises ValueError for int `[batch, prompt]` ids and 0/1 mask that cannot be continued: an
    empty prompt, a mask of another shape or values, a row of padding only, ids outside the
    vocabulary."""
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. the BOS id 1)")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {attention_mask.shape} but input_ids {input_ids.shape}")
    check_attention_mask(attention_mask)
    real_lengths = attention_mask.sum(axis=1)
    if (real_lengths == 0).any():
        raise ValueError(f"rows {np.flatnonzero(real_lengths == 0).tolist()} are all padding: nothing to continue")
    if input_ids.min() < 0 or input_ids.max() >= vocab_size:
        raise ValueError(
            f"input_ids must be in [0, {vocab_size}), got values from {input_ids.min()} to {input_ids.max()}"
        )


def new_token_count(
    max_new_tokens: int | None, max_length: int | None, prompt: int, longest_prompt: int, max_positions: int | None
) -> int:
    """The new tokens per row: `max_new_tokens`, else `max_length - prompt` (prompt columns), else
    `DEFAULT_NEW_TOKENS`; ValueError unless a positive integer whose generation fits the model's
    positions (`max_positions`, None: no limit) after the longest real prompt."""
    if max_new_tokens is None:
        max_new_tokens = DEFAULT_NEW_TOKENS if max_length is None else max_length - prompt
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
        raise ValueError(
            f"max_new_tokens must be a positive integer, got {max_new_tokens!r} (max_length={max_length!r})"
        )
    longest = longest_prompt + int(max_new_tokens)
    if max_positions is not None and longest > max_positions:
        raise ValueError(
            f"prompt ({longest_prompt} tokens) + max_new_tokens ({max_new_tokens}) = {longest} "
            f"exceeds max_position_embeddings ({max_positions}); shorten the prompt"
        )
    return int(max_new_tokens)


def sampling_mode(do_sample: bool, top_k: int | None, top_p: float, min_tokens_to_keep: int = 1) -> SamplingMode:
    """The `SamplingMode` (what the traced graph holds) of validated sampling settings: greedy
    ignores the filters; top-k 0 or None is no filter; top-p runs below 1."""
    if not do_sample:
        return SamplingMode()
    return SamplingMode(True, int(top_k or 0), bool(top_p < 1.0), int(min_tokens_to_keep))


def default_pad_token_id(model_pad_token_id: int | None, eos_token_ids: Sequence[int]) -> int:
    """The id padding gets when a request names none: the model's pad id, else its first end id,
    else 0 (HF's choice)."""
    if model_pad_token_id is not None:
        return int(model_pad_token_id)
    return int(eos_token_ids[0]) if len(eos_token_ids) else 0


def left_align(input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """int `[batch, length]` ids and 0/1 mask -> the same with each row's padding moved to the left
    (generation needs left padding), the tokens in their order (a stable sort on the mask)."""
    order = tf.argsort(attention_mask, axis=1, stable=True)
    return tf.gather(input_ids, order, batch_dims=1), tf.gather(attention_mask, order, batch_dims=1)


def streamer_calls(streamer: Any) -> tuple[Callable[[Any], Any] | None, Callable[[], Any] | None]:
    """`(put, end)` of a `streamer` argument: an object with `put(token_ids [batch])` and perhaps
    `end()` (e.g. `TextStreamer`), or a callable taking the token ids, or None. Either is None when
    there is nothing to call."""
    if streamer is None:
        return None, None
    put = streamer.put if hasattr(streamer, "put") else streamer
    if not callable(put):
        raise TypeError(f"streamer must have a put(token_ids) method or be callable, got {type(streamer).__name__}")
    return put, getattr(streamer, "end", None)
