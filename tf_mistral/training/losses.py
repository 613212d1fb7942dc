"""Training losses of the three heads, computed once per batch as token statistics.

Every head reduces to the same thing: a float32 negative log-likelihood per labelled position, the
positions that count (labels != -100, as in HF transformers), and whether the arg-max was right.
`TokenStatistics` carries the sums; the loss is `nll / weight` and the metrics (perplexity,
accuracy) read the same sums, so the [batch, seq, vocab] softmax is computed once. A batch with no
labelled position has no loss: `nll / weight` is 0 / 0, NaN.

Logits arrive in the compute dtype (bf16 / fp16 under mixed precision) and are cast to float32
before the softmax, so the loss is float32 under any dtype policy.
"""

import collections
from typing import Any

from keras import ops

from tf_mistral.labels import IGNORE_INDEX

TokenStatistics = collections.namedtuple("TokenStatistics", ["nll", "weight", "correct", "count"])
TokenStatistics.__doc__ = """Float32 scalars summed over one batch.

nll: sum of weight * negative log-likelihood over labelled positions.
weight: sum of the weights of those positions (their count when unweighted): the loss denominator.
correct: labelled positions whose arg-max logit is the label (unweighted).
count: labelled positions (unweighted).
"""


def shift_labels(labels: Any) -> Any:
    """Labels for next-token prediction: position t is scored on labels[t + 1] (the last on nothing).

    int [batch, seq] -> int32 [batch, seq], -100 in the last column. Shifting the labels, not the
    logits, avoids a copy of the [batch, seq - 1, vocab] logits.
    """
    labels = ops.cast(labels, "int32")
    return ops.concatenate([labels[:, 1:], ops.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)


def _one_per_sequence(labels):
    """int `[batch]` or `[batch, 1]` -> int32 `[batch]`."""
    return ops.reshape(ops.cast(labels, "int32"), (-1,))


def _one_per_token(labels):
    """int `[batch, seq]` -> int32 `[batch, seq]`."""
    return ops.cast(labels, "int32")


# What each head scores each position on, from the labels it is given (HF's conventions):
TARGETS = {
    "causal_lm": shift_labels,  # labels aligned with the inputs, [batch, seq]; shifted here
    "sequence_classification": _one_per_sequence,  # one class per sequence, [batch]
    "token_classification": _one_per_token,  # one class per token, [batch, seq]
}


def label_weights(task: str, labels: Any, sample_weight: Any = None, class_weight: Any = None) -> tuple[Any, Any]:
    """What each position of a batch counts for in the loss of the head `task` (a key of `TARGETS`).

    Needs no logits, so a training step can tell a batch with nothing to learn before running it.

    Args:
        labels: int, as the head takes them; -100 marks positions that are not scored.
        sample_weight: float `[batch]` per-sequence weights, or None.
        class_weight: float `[classes]`, or None.

    Returns:
        (targets, weight): int32 targets and their float32 weights, both `[batch, seq]` (`[batch]`
        for sequence classification): 0 where the target is -100, else
        `class_weight[target] * sample_weight[row]` (1 without weights). `sum(weight)` is the
        loss denominator.
    """
    targets = TARGETS[task](labels)
    valid = ops.not_equal(targets, IGNORE_INDEX)
    weight = ops.cast(valid, "float32")
    if class_weight is not None:
        weight = weight * ops.take(ops.convert_to_tensor(class_weight, "float32"), ops.where(valid, targets, 0))
    if sample_weight is not None:
        rows = ops.reshape(ops.cast(sample_weight, "float32"), (-1,) + (1,) * (len(targets.shape) - 1))
        weight = weight * rows
    return targets, weight


def statistics(
    task: str, labels: Any, logits: Any, sample_weight: Any = None, class_weight: Any = None
) -> TokenStatistics:
    """The `TokenStatistics` of one batch for the head `task` (see `label_weights` for the
    arguments); logits: `[batch, seq, classes]` (`[batch, classes]` for sequence classification),
    any float dtype. The causal LM's are HF's `MistralForCausalLM(labels=...)`: logits at t
    predict labels at t + 1."""
    targets, weight = label_weights(task, labels, sample_weight, class_weight)
    valid = ops.not_equal(targets, IGNORE_INDEX)
    safe = ops.where(valid, targets, 0)
    logits = ops.cast(logits, "float32")
    nll = ops.sparse_categorical_crossentropy(safe, logits, from_logits=True)
    correct = ops.logical_and(valid, ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), safe))
    return TokenStatistics(
        nll=ops.sum(ops.where(valid, nll, 0.0) * weight),
        weight=ops.sum(weight),
        correct=ops.sum(ops.cast(correct, "float32")),
        count=ops.sum(ops.cast(valid, "float32")),
    )


def causal_lm_loss(labels: Any, logits: Any, sample_weight: Any = None) -> Any:
    """Mean next-token cross-entropy over labelled positions, float32 scalar (HF's loss).

    NaN when no position is labelled: a mean over nothing (PyTorch's, hence HF's, is NaN too),
    never a perfect 0. `fit` skips such batches instead (`training.trainer`).
    """
    stats = statistics("causal_lm", labels, logits, sample_weight)
    return stats.nll / stats.weight
