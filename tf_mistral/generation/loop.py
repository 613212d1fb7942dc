"""The generation loop: prefill, then a `while_loop` of decode steps, all against the fixed-size cache.

Everything here is traceable: `generate` compiles it with XLA, the SavedModel exporter traces it
without. Column c of the left-padded batch is position c; row b's padding ends at `pad_start[b]`.
"""

from typing import Any, NamedTuple

import keras
import tensorflow as tf

from tf_mistral import cache as kv_cache
from tf_mistral.generation import processors
from tf_mistral.generation.sampling import SamplingMode, next_tokens


def pad_starts(attention_mask: tf.Tensor) -> tf.Tensor:
    """int32 `[batch]`: the first real column of each left-padded row."""
    mask = tf.cast(attention_mask, tf.int32)
    return tf.shape(mask)[1] - tf.reduce_sum(mask, axis=1)


def _slots(cache):
    """The cache's slots per layer: a Python int, or an int32 scalar when traced with a dynamic length."""
    return cache[0][0].shape[2] or tf.shape(cache[0][0])[2]


def _prefill_chunked(model, input_ids, pad_start, cache, cache_writes):
    """Prefills a prompt longer than the cache, one cache-length chunk at a time (the first chunk
    padded on the left). Returns `(last logits [batch, vocab], cache, prompt columns, pad_start)`
    (`pad_start` moved right by the padding added)."""
    chunk = _slots(cache)
    length = tf.shape(input_ids)[1]
    extra = (-length) % chunk
    input_ids = tf.pad(input_ids, [[0, 0], [extra, 0]])
    pad_start = pad_start + extra
    chunks = (length + extra) // chunk

    def body(i, logits, cache):
        ids = tf.slice(input_ids, [0, i * chunk], [-1, chunk])
        logits, cache = model.forward_with_cache(ids, cache, i * chunk, pad_start, cache_writes=cache_writes)
        return i + 1, logits[:, 0], cache

    logits = tf.zeros([tf.shape(input_ids)[0], model.config.vocab_size], model.compute_dtype)
    _, logits, cache = tf.while_loop(lambda i, *_: i < chunks, body, (0, logits, cache))
    return logits, cache, length + extra, pad_start


def prefill(
    model: keras.Model, input_ids: tf.Tensor, pad_start: tf.Tensor, cache: list[tuple[tf.Tensor, tf.Tensor]],
    cache_writes: str,
) -> tuple[tf.Tensor, list[tuple[tf.Tensor, tf.Tensor]], tf.Tensor, tf.Tensor]:
    """Runs the prompt through the model, filling the cache.

    Args:
        input_ids: int32 `[batch, prompt]`, left-padded.
        pad_start: int32 `[batch]`.
        cache: empty per-layer `(K, V)` list.
        cache_writes: how a 1-token chunk is written (`tf_mistral.cache.write`).

    Returns:
        `(logits [batch, vocab] of the last column, cache, prompt columns, pad_start)`; a prompt
        longer than the cache gains left padding up to a whole number of chunks.
    """
    cache_length = _slots(cache)

    def single():
        logits, new_cache = model.forward_with_cache(input_ids, cache, 0, pad_start, cache_writes=cache_writes)
        return logits[:, 0], new_cache, tf.shape(input_ids)[1], pad_start

    static_length = input_ids.shape[1]
    if static_length is not None and isinstance(cache_length, int):
        if static_length <= cache_length:
            return single()
        return _prefill_chunked(model, input_ids, pad_start, cache, cache_writes)
    return tf.cond(
        tf.shape(input_ids)[1] <= cache_length,
        single,
        lambda: _prefill_chunked(model, input_ids, pad_start, cache, cache_writes),
    )


class Sampling(NamedTuple):
    """How tokens are chosen and when rows end; `mode` and `processing` are static, the rest may
    be tensors (`top_k` is read only when `mode.top_k` is `sampling.RUNTIME`)."""

    mode: SamplingMode
    temperature: object = 1.0
    top_p: object = 1.0
    seed: object = 0
    eos_token_ids: tuple = ()
    pad_token_id: int = 0
    top_k: object = 0
    processing: processors.Processing = processors.Processing()


def _emit(state, logits, sampling):
    """Picks the token of column `state["step"]` from `logits [batch, vocab]`."""
    tokens, finished, step = state["tokens"], state["finished"], state["step"]
    batch = tf.shape(tokens)[0]
    raw_logits = logits
    if sampling.processing.active:
        logits = processors.process(state, logits, sampling.processing, sampling.eos_token_ids)
    token = next_tokens(
        logits, sampling.mode, sampling.temperature, sampling.top_p, sampling.seed, step, sampling.top_k
    )
    token = tf.where(finished, sampling.pad_token_id, token)
    tokens = tf.tensor_scatter_nd_update(tokens, tf.stack([tf.range(batch), tf.fill([batch], step)], axis=1), token)
    eos = tf.constant(list(sampling.eos_token_ids) or [-1], tf.int32)
    finished = finished | tf.reduce_any(token[:, None] == eos[None, :], axis=1)
    state = dict(state, tokens=tokens, finished=finished, token=token, step=step + 1)
    if sampling.processing.active:
        state = processors.record(state, token, raw_logits, logits, sampling.processing, sampling)
    return state


def start(
    model: keras.Model, input_ids: tf.Tensor, attention_mask: tf.Tensor, max_new_tokens: int,
    cache_length: int | tf.Tensor, pad_token_id: int, processing: processors.Processing = processors.Processing(),
    prompt_columns: tf.Tensor | None = None, cache_writes: str = kv_cache.SLICE_WRITES,
) -> dict[str, Any]:
    """Prefills the prompt: the state that `first_token` and then `decode_step` advance.

    Args:
        model: a `TFMistralForCausalLM`.
        input_ids: int32 `[batch, prompt]`, left-padded; attention_mask: `[batch, prompt]`.
        max_new_tokens: Python int, the width of the output buffer.
        cache_length: slots per layer (`buckets.cache_length`): a Python int, or an int32 scalar
            (the SavedModel's per-request length; the cache's slot axis is then dynamic).
        pad_token_id: Python int, what the output buffer holds where nothing was generated.
        processing: `processors.Processing`; its state entries are added (none by default).
        prompt_columns: int32 scalar, the last columns that are the prompt as the caller gave it,
            padding included (HF's processors read its pad ids as tokens); the columns before are
            `generate`'s bucket padding, which they do not. None: every column.
        cache_writes: `kv_cache.SLICE_WRITES` under XLA, `SCATTER_WRITES` in a plain TF graph
            (`tf_mistral.cache.write`); the same for the `decode_step`s that follow.

    Returns:
        A dict: `logits` `[batch, vocab]` of the prompt's last column (which `first_token`
        consumes), `tokens` int32 `[batch, max_new_tokens]` (`pad_token_id` where not yet
        generated), `finished` bool `[batch]`, `token` int32 `[batch]` (the newest), `step` int32
        (tokens generated), `cache`, `columns`, `pad_start`, and what `processing` needs.
    """
    input_ids = tf.cast(input_ids, tf.int32)
    batch = tf.shape(input_ids)[0]
    cache = kv_cache.empty_cache(model.config, batch, cache_length, model.compute_dtype)
    logits, cache, columns, pad_start = prefill(model, input_ids, pad_starts(attention_mask), cache, cache_writes)
    return dict(
        logits=logits,
        tokens=tf.fill([batch, max_new_tokens], tf.constant(pad_token_id, tf.int32)),
        finished=tf.zeros([batch], tf.bool),
        token=tf.zeros([batch], tf.int32),
        step=tf.constant(0, tf.int32),
        cache=cache,
        columns=columns,
        pad_start=pad_start,
        **processors.initial_state(processing, input_ids, prompt_columns, max_new_tokens, model.config.vocab_size),
    )


def first_token(state: dict[str, Any], sampling: Sampling) -> dict[str, Any]:
    """Picks the first new token from the prefill's `logits` (which the state then drops)."""
    state = dict(state)
    return _emit(state, state.pop("logits"), sampling)


def decode_step(
    model: keras.Model, state: dict[str, Any], sampling: Sampling, cache_writes: str = kv_cache.SLICE_WRITES
) -> dict[str, Any]:
    """Feeds the newest token through the model and picks the next one."""
    column = state["columns"] + state["step"] - 1
    logits, cache = model.forward_with_cache(
        state["token"][:, None], state["cache"], column, state["pad_start"], cache_writes=cache_writes
    )
    return _emit(dict(state, cache=cache), logits[:, 0], sampling)


def decode(
    model: keras.Model, state: dict[str, Any], new_tokens: int | tf.Tensor, sampling: Sampling,
    cache_writes: str = kv_cache.SLICE_WRITES,
) -> dict[str, Any]:
    """From the state `start` made: `first_token`, then `decode_step` in a `while_loop` until
    `new_tokens` tokens or every row ended. Returns the final state (its `tokens` and `step`)."""

    def running(state):
        return (state["step"] < new_tokens) & ~tf.reduce_all(state["finished"])

    def step(state):
        return (decode_step(model, state, sampling, cache_writes),)

    (state,) = tf.while_loop(running, step, (first_token(state, sampling),))
    return state


def generate_tokens(
    model: keras.Model, input_ids: tf.Tensor, attention_mask: tf.Tensor, max_new_tokens: int,
    new_tokens: int | tf.Tensor, cache_length: int | tf.Tensor, sampling: Sampling,
    cache_writes: str = kv_cache.SLICE_WRITES,
) -> tuple[tf.Tensor, tf.Tensor]:
    """`start`, then `decode`: one traceable function from prompt to tokens (the SavedModel's).

    Returns `(tokens int32 [batch, max_new_tokens], steps int32)`; columns from `steps` on are
    `pad_token_id`, and so is everything a row emits after its end token.
    """
    state = start(model, input_ids, attention_mask, max_new_tokens, cache_length, sampling.pad_token_id,
                  sampling.processing, cache_writes=cache_writes)
    state = decode(model, state, new_tokens, sampling, cache_writes)
    return state["tokens"], state["step"]
