"""HF's logits processors that `generate` offers, and the per-step scores it can record.

`Processing` is static (part of a compiled loop's key) and its default does nothing: the default
loop carries no extra state and traces the same graph as before. What a setting needs is added to
the loop's state by `initial_state` and kept current by `record`:

    seen        bool  [batch, vocab]            tokens in the row so far (repetition_penalty)
    history     int32 [batch, prompt + width]   the row's tokens, -1 for bucket padding and the
                                                future (no_repeat_ngram_size)

As HF's processors, which read the whole of `input_ids`, they count the pad ids of a padded prompt
as tokens of the row; only the columns `generate` itself adds to reach a prompt bucket do not.
    scores      float32 [batch, width, vocab]   processed scores of each step (output_scores)
    raw_logits  float32 [batch, width, vocab]   the model's logits of each step (output_logits)
"""

import dataclasses
from typing import Any

import tensorflow as tf

from tf_mistral.generation.sampling import warp


@dataclasses.dataclass(frozen=True)
class Processing:
    """Which processors run (HF's order: repetition penalty, n-gram ban, min new tokens) and what
    each step records. Values are Python numbers: a new value traces a new loop."""

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    output_scores: bool = False
    output_logits: bool = False

    @property
    def active(self) -> bool:
        return self != Processing()


def initial_state(
    processing: Processing, input_ids: tf.Tensor, prompt_columns: tf.Tensor | None, width: int, vocab: int
) -> dict[str, tf.Tensor]:
    """The state entries `processing` needs (module docstring), from the left-padded int32
    `input_ids [batch, columns]`, of which the last `prompt_columns` (int32 scalar; None: all)
    are the prompt as given, and the output width; {} for the default."""
    batch, columns = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
    first_given = 0 if prompt_columns is None else columns - prompt_columns
    given = tf.broadcast_to(tf.range(columns) >= first_given, tf.shape(input_ids))  # all but bucket padding
    state = {}
    if processing.repetition_penalty != 1.0:
        rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(input_ids))
        counts = tf.scatter_nd(tf.stack([rows, input_ids], axis=-1), tf.cast(given, tf.int32), [batch, vocab])
        state["seen"] = counts > 0
    if processing.no_repeat_ngram_size:
        prompt = tf.where(given, input_ids, -1)
        state["history"] = tf.concat([prompt, tf.fill([batch, width], -1)], axis=1)
    for name, wanted in (("scores", processing.output_scores), ("raw_logits", processing.output_logits)):
        if wanted:
            state[name] = tf.zeros([batch, width, vocab], tf.float32)
    return state


def process(
    state: dict[str, Any], logits: tf.Tensor, processing: Processing, eos_token_ids: tuple[int, ...]
) -> tf.Tensor:
    """float32 `[batch, vocab]`: `logits` after the processors `processing` asks for."""
    logits = tf.cast(logits, tf.float32)
    if processing.repetition_penalty != 1.0:
        penalty = processing.repetition_penalty
        logits = tf.where(state["seen"], tf.where(logits < 0, logits * penalty, logits / penalty), logits)
    if processing.no_repeat_ngram_size:
        banned = banned_ngram_tokens(
            state["history"], _filled_columns(state), processing.no_repeat_ngram_size, logits.shape[-1]
        )
        logits = tf.where(banned, -float("inf"), logits)
    if processing.min_new_tokens and eos_token_ids:
        eos = tf.reduce_any(tf.one_hot(list(eos_token_ids), logits.shape[-1]) > 0, axis=0)
        logits = tf.where(eos[None] & (state["step"] < processing.min_new_tokens), -float("inf"), logits)
    return logits


def banned_ngram_tokens(history: tf.Tensor, length: tf.Tensor, size: int, vocab: int) -> tf.Tensor:
    """bool `[batch, vocab]`: the tokens that would repeat an n-gram (n = `size`) of the row.

    history: int32 `[batch, columns]`, -1 where there is no token; length: int32 scalar, the
    filled columns. A token is banned when the row's last `size - 1` tokens occurred before,
    followed by it (HF's `NoRepeatNGramLogitsProcessor`).
    """
    columns = history.shape[1]
    starts = columns - size + 1
    windows = tf.stack([history[:, k:k + starts] for k in range(size)], axis=2)  # [batch, starts, size]
    suffix = tf.gather(history, tf.maximum(length - (size - 1) + tf.range(size - 1), 0), axis=1)  # [batch, size-1]
    complete = (tf.range(starts) + size <= length) & (length >= size - 1)
    match = (
        tf.reduce_all(windows[:, :, :-1] == suffix[:, None, :], axis=2)
        & tf.reduce_all(windows >= 0, axis=2)
        & complete[None]
    )
    batch = tf.shape(history)[0]
    segments = tf.range(batch)[:, None] * vocab + tf.maximum(windows[:, :, -1], 0)
    banned = tf.math.unsorted_segment_max(tf.cast(match, tf.int32), segments, batch * vocab)
    return tf.reshape(banned > 0, [batch, vocab])


def _filled_columns(state):
    """int32 scalar: the columns of `history` that hold the prompt and the tokens made so far."""
    return tf.shape(state["history"])[1] - tf.shape(state["tokens"])[1] + state["step"]


def record(
    state: dict[str, Any], token: tf.Tensor, raw_logits: tf.Tensor, scores: tf.Tensor, processing: Processing,
    sampling: Any,
) -> dict[str, Any]:
    """The state after `token` (int32 `[batch]`, made at column `state["step"] - 1`)."""
    step = state["step"] - 1
    batch = tf.shape(token)[0]
    rows = tf.range(batch)
    state = dict(state)
    if "seen" in state:
        state["seen"] = state["seen"] | (tf.one_hot(token, state["seen"].shape[-1]) > 0)
    if "history" in state:
        column = tf.shape(state["history"])[1] - tf.shape(state["tokens"])[1] + step
        state["history"] = tf.tensor_scatter_nd_update(
            state["history"], tf.stack([rows, tf.fill([batch], column)], 1), token
        )
    at_step = tf.stack([rows, tf.fill([batch], step)], axis=1)
    if processing.output_scores:
        if sampling.mode.do_sample:
            scores = warp(scores, sampling.mode, sampling.temperature, sampling.top_p, sampling.top_k)
        state["scores"] = tf.tensor_scatter_nd_update(state["scores"], at_step, scores)
    if processing.output_logits:
        state["raw_logits"] = tf.tensor_scatter_nd_update(state["raw_logits"], at_step, tf.cast(raw_logits, tf.float32))
    return state
