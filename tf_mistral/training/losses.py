"""Training losses of the three heads, computed once per batch as token statistics.

Every head reduces to the same thing: a float32 negative log-likelihood per labelled position, the
positions that count (labels != -100, as in HF transformers), and whether the arg-max was right.
`TokenStatistics` carries the sums; the loss is `nll / weight` and the metrics (perplexity,
accuracy) read the same sums, so the [batch, seq, vocab] softmax is computed once.

Logits arrive in the compute dtype (bf16 / fp16 under mixed precision) and are cast to float32
before the softmax, so the loss is float32 under any dtype policy.
"""

import collections

from keras import ops

IGNORE_INDEX = -100  # HF transformers' label for "no loss here" (padding, prompts, BOS of packed docs)

TokenStatistics = collections.namedtuple("TokenStatistics", ["nll", "weight", "correct", "count"])
TokenStatistics.__doc__ = """Float32 scalars summed over one batch.

nll: sum of weight * negative log-likelihood over labelled positions.
weight: sum of the weights of those positions (their count when unweighted): the loss denominator.
correct: labelled positions whose arg-max logit is the label (unweighted).
count: labelled positions (unweighted).
"""


def _statistics(labels, logits, position_weight):
    """labels: int [...]; logits: [..., classes]; position_weight: float32 [...] or None."""
    labels = ops.cast(labels, "int32")
    valid = ops.not_equal(labels, IGNORE_INDEX)
    safe = ops.where(valid, labels, 0)
    logits = ops.cast(logits, "float32")
    nll = ops.sparse_categorical_crossentropy(safe, logits, from_logits=True)
    weight = ops.cast(valid, "float32")
    if position_weight is not None:
        weight = weight * position_weight
    correct = ops.logical_and(valid, ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), safe))
    return TokenStatistics(
        nll=ops.sum(ops.where(valid, nll, 0.0) * weight),
        weight=ops.sum(weight),
        correct=ops.sum(ops.cast(correct, "float32")),
        count=ops.sum(ops.cast(valid, "float32")),
    )


def _class_and_sample_weight(labels, sample_weight, class_weight, rank):
    """float32 weights broadcast to `labels` ([batch] or [batch, seq]), or None."""
    weight = None
    if class_weight is not None:
        safe = ops.where(ops.equal(labels, IGNORE_INDEX), 0, ops.cast(labels, "int32"))
        weight = ops.take(ops.convert_to_tensor(class_weight, "float32"), safe)
    if sample_weight is not None:
        sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,) + (1,) * (rank - 1))
        weight = sample_weight if weight is None else weight * sample_weight
    return weight


def shift_labels(labels):
    """Labels for next-token prediction: position t is scored on labels[t + 1] (the last on nothing).

    int [batch, seq] -> int32 [batch, seq], -100 in the last column. Shifting the labels, not the
    logits, avoids a copy of the [batch, seq - 1, vocab] logits.
    """
    labels = ops.cast(labels, "int32")
    return ops.concatenate([labels[:, 1:], ops.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)


def causal_lm_statistics(labels, logits, sample_weight=None, class_weight=None):
    """Next-token statistics, as HF's `MistralForCausalLM(labels=...)`.

    Args:
        labels: int `[batch, seq]`, aligned with the inputs (HF convention: usually the input ids
            themselves); the loss shifts them. -100 marks positions that are not predicted.
        logits: `[batch, seq, vocab]`, any float dtype.
        sample_weight: float `[batch]` per-sequence weights, or None.
        class_weight: unused (accepted for a uniform signature).
    """
    del class_weight
    shifted = shift_labels(labels)
    return _statistics(shifted, logits, _class_and_sample_weight(shifted, sample_weight, None, 2))


def sequence_classification_statistics(labels, logits, sample_weight=None, class_weight=None):
    """One label per sequence. labels: int `[batch]` (or `[batch, 1]`); logits: `[batch, classes]`;
    class_weight: float `[classes]` or None; sample_weight: float `[batch]` or None."""
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    return _statistics(labels, logits, _class_and_sample_weight(labels, sample_weight, class_weight, 1))


def token_classification_statistics(labels, logits, sample_weight=None, class_weight=None):
    """One label per token, -100 ignored (padding, sub-word continuations). labels: int
    `[batch, seq]`; logits: `[batch, seq, classes]`; class_weight: float `[classes]` or None."""
    labels = ops.cast(labels, "int32")
    return _statistics(labels, logits, _class_and_sample_weight(labels, sample_weight, class_weight, 2))


STATISTICS = {
    "causal_lm": causal_lm_statistics,
    "sequence_classification": sequence_classification_statistics,
    "token_classification": token_classification_statistics,
}


def causal_lm_loss(labels, logits, sample_weight=None):
    """Mean next-token cross-entropy over labelled positions, float32 scalar (HF's loss)."""
    stats = causal_lm_statistics(labels, logits, sample_weight)
    return stats.nll / ops.maximum(stats.weight, 1e-9)
