"""Choosing the next token: greedy, or sampling with temperature, top-k and top-p (HF's order).

Sampling is Gumbel-max over the filtered logits with TensorFlow's stateless RNG, keyed by
`(seed, step)`, so a seed reproduces a generation exactly, inside or outside XLA.
"""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class SamplingMode:
    """The parts of sampling that change the traced graph (the rest are tensors).

    do_sample: False for greedy. top_k: 0 for no top-k filter. top_p: whether a top-p
    filter runs (its threshold is a tensor).
    """

    do_sample: bool = False
    top_k: int = 0
    top_p: bool = False


def validate_sampling(do_sample, temperature, top_k, top_p):
    """Raises ValueError for sampling values that would give garbage."""
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r} (for greedy decoding use do_sample=False)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def next_tokens(logits, mode, temperature, top_p, seed, step):
    """Picks one token per row.

    Args:
        logits: float `[batch, vocab]`.
        mode: `SamplingMode`.
        temperature, top_p: float32 scalars (ignored when greedy; top_p only with mode.top_p).
        seed: int32 scalar; step: int32 scalar, mixed into the stateless RNG key.

    Returns:
        int32 `[batch]`.
    """
    logits = tf.cast(logits, tf.float32)
    if not mode.do_sample:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    logits = logits / temperature
    removed = tf.constant(-float("inf"), tf.float32)
    if mode.top_k:
        kth_largest = tf.math.top_k(logits, k=mode.top_k).values[:, -1:]
        logits = tf.where(logits < kth_largest, removed, logits)
    if mode.top_p:
        descending = tf.sort(logits, axis=-1, direction="DESCENDING")
        probs = tf.nn.softmax(descending, axis=-1)
        mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        smallest_kept = tf.reduce_min(tf.where(mass_before < top_p, descending, float("inf")), axis=-1, keepdims=True)
        logits = tf.where(logits < smallest_kept, removed, logits)
    key = tf.stack([tf.cast(seed, tf.int32), tf.cast(step, tf.int32)])
    uniform = tf.random.stateless_uniform(tf.shape(logits), seed=key, minval=1e-20, maxval=1.0)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    return tf.argmax(logits + gumbel, axis=-1, output_type=tf.int32)
