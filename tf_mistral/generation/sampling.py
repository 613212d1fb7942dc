"""Choosing the next token: greedy, or sampling with temperature, top-k and top-p (HF's order).

Sampling is Gumbel-max over the filtered logits with TensorFlow's stateless RNG, keyed by
`(seed, step)`, so a seed reproduces a generation exactly. TensorFlow's RNG kernels draw other
numbers under XLA than without it, so the same seed samples differently in an XLA-compiled loop
(`generate`) and in a plain graph (the default SavedModel export); greedy decoding is the same.
"""

import dataclasses
import math
import numbers

import tensorflow as tf

from tf_mistral.arguments import SEEDS

RUNTIME = -1  # a `SamplingMode` field decided by tensors at run time (SavedModel signatures)


@dataclasses.dataclass(frozen=True)
class SamplingMode:
    """The parts of sampling that change the traced graph (the rest are tensors).

    do_sample: False for greedy, True to sample, or `RUNTIME`: sample when the `temperature`
    tensor is > 0, else greedy. top_k: 0 for no top-k filter, k > 0 for a fixed k (>= vocab: no
    filter), or `RUNTIME`: k is the `top_k` tensor (0 or >= vocab: no filter). top_p: whether a
    top-p filter runs (its threshold is a tensor). min_tokens_to_keep: the fewest tokens the top-k
    and top-p filters leave (HF's `min_tokens_to_keep`).
    """

    do_sample: bool = False
    top_k: int = 0
    top_p: bool = False
    min_tokens_to_keep: int = 1


def validate_sampling(do_sample: bool, temperature: float, top_k: int | None, top_p: float) -> None:
    """Raises ValueError for sampling values that would give garbage (NaN and infinity included)."""
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be a finite number > 0, got {temperature!r} (for greedy decoding use do_sample=False)"
        )
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def validate_seed(seed: int) -> None:
    """Raises ValueError for a seed that is not an integer in `SEEDS` (the RNG would wrap it)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) not in SEEDS:
        raise ValueError(
            f"seed must be an integer in [{SEEDS.start}, {SEEDS.stop - 1}] (the int32 key of TensorFlow's "
            f"stateless RNG), got {seed!r}"
        )


def next_tokens(
    logits: tf.Tensor, mode: SamplingMode, temperature: float | tf.Tensor, top_p: float | tf.Tensor,
    seed: int | tf.Tensor, step: int | tf.Tensor, top_k: int | tf.Tensor = 0,
) -> tf.Tensor:
    """Picks one token per row.

    Args:
        logits: float `[batch, vocab]`.
        mode: `SamplingMode`.
        temperature, top_p: float32 scalars (ignored when greedy; top_p only with mode.top_p).
        seed: int32 scalar; step: int32 scalar, mixed into the stateless RNG key.
        top_k: int32 scalar, read only when `mode.top_k` is `RUNTIME`.

    Returns:
        int32 `[batch]`.
    """
    logits = tf.cast(logits, tf.float32)
    if not mode.do_sample:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    if mode.do_sample == RUNTIME:
        return tf.cond(
            temperature > 0,
            lambda: _sample(logits, mode, temperature, top_p, seed, step, top_k),
            lambda: tf.argmax(logits, axis=-1, output_type=tf.int32),
        )
    return _sample(logits, mode, temperature, top_p, seed, step, top_k)


def warp(
    logits: tf.Tensor, mode: SamplingMode, temperature: float | tf.Tensor, top_p: float | tf.Tensor,
    top_k: int | tf.Tensor = 0,
) -> tf.Tensor:
    """float32 `[batch, vocab]`: the logits divided by `temperature`, then -inf outside the top-k /
    top-p filters of `mode` (HF's warpers; what HF's `scores` hold when sampling)."""
    logits = tf.cast(logits, tf.float32) / temperature
    removed = tf.constant(-float("inf"), tf.float32)
    if mode.top_k:
        k = top_k if mode.top_k == RUNTIME else max(mode.top_k, mode.min_tokens_to_keep)
        logits = tf.where(logits < _kth_largest(logits, k), removed, logits)
    if mode.top_p:
        descending = tf.sort(logits, axis=-1, direction="DESCENDING")
        probs = tf.nn.softmax(descending, axis=-1)
        kept = tf.cumsum(probs, axis=-1, exclusive=True) < top_p
        if mode.min_tokens_to_keep > 1:
            kept = kept | (tf.range(tf.shape(descending)[-1]) < mode.min_tokens_to_keep)[None]
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        smallest_kept = tf.reduce_min(tf.where(kept, descending, float("inf")), axis=-1, keepdims=True)
        logits = tf.where(logits < smallest_kept, removed, logits)
    return logits


def _sample(logits, mode, temperature, top_p, seed, step, top_k):
    """Gumbel-max over the `warp`ed float32 logits."""
    logits = warp(logits, mode, temperature, top_p, top_k)
    key = tf.stack([tf.cast(seed, tf.int32), tf.cast(step, tf.int32)])
    uniform = tf.random.stateless_uniform(tf.shape(logits), seed=key, minval=1e-20, maxval=1.0)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    return tf.argmax(logits + gumbel, axis=-1, output_type=tf.int32)


def _kth_largest(logits, k):
    """float32 `[batch, 1]`: each row's k-th largest logit, -inf (no filter) when k >= vocab. `k` is
    a Python int > 0, or an int32 scalar tensor for which 0 also means no filter; a tensor k is read
    from a full sort, as XLA needs static shapes (`top_k` with a tensor k has a dynamic one)."""
    if isinstance(k, int) and k >= logits.shape[-1]:
        return tf.fill([tf.shape(logits)[0], 1], -float("inf"))
    if isinstance(k, int):
        return tf.math.top_k(logits, k=k).values[:, -1:]
    vocab = tf.shape(logits)[-1]
    k = tf.cast(k, tf.int32)
    descending = tf.sort(logits, axis=-1, direction="DESCENDING")
    kth_largest = tf.gather(descending, tf.clip_by_value(k, 1, vocab)[None] - 1, axis=1)
    return tf.where((k > 0) & (k < vocab), kth_largest, -float("inf"))
