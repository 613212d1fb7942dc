"""The `loss` that `call(..., labels=...)` returns, as HF transformers computes it for each head.

Every loss is a float32 scalar computed from float32 logits. Cross-entropies are means over the
labelled positions (labels != -100); a batch with none gives NaN, as in PyTorch.
"""

from typing import Any

from keras import ops

from tf_mistral.config import MistralConfig
from tf_mistral.training.losses import statistics


def _mean_cross_entropy(task, labels, logits):
    stats = statistics(task, labels, logits)
    return stats.nll / stats.weight


def causal_lm_loss(labels: Any, logits: Any) -> Any:
    """Mean next-token cross-entropy: labels int `[batch, seq]` aligned with the inputs (shifted
    here, as HF does), logits `[batch, seq, vocab]`."""
    return _mean_cross_entropy("causal_lm", labels, logits)


def token_classification_loss(labels: Any, logits: Any) -> Any:
    """Mean cross-entropy: labels int `[batch, seq]`, logits `[batch, seq, num_labels]`."""
    return _mean_cross_entropy("token_classification", labels, logits)


def problem_type(config: MistralConfig, labels: Any) -> str:
    """`config.problem_type`, or HF's choice when it is None: regression for one label,
    single-label classification for integer labels, multi-label classification otherwise."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if "int" in str(ops.convert_to_tensor(labels).dtype):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(config: MistralConfig, labels: Any, logits: Any) -> Any:
    """HF's loss for pooled logits `[batch, num_labels]`, by `problem_type(config, labels)`:

    - regression: mean squared error against float labels `[batch, num_labels]` (`[batch]` for
      one label);
    - single_label_classification: mean cross-entropy against int labels `[batch]`, -100 ignored;
    - multi_label_classification: mean binary cross-entropy with logits against float labels
      `[batch, num_labels]` (0 / 1 or probabilities), averaged over every entry.
    """
    logits = ops.cast(logits, "float32")
    kind = problem_type(config, labels)
    if kind == "single_label_classification":
        return _mean_cross_entropy("sequence_classification", labels, logits)
    labels = ops.reshape(ops.cast(labels, "float32"), ops.shape(logits))
    if kind == "regression":
        return ops.mean(ops.square(logits - labels))
    # log(1 + exp(-|x|)) + max(x, 0) - x * y: the stable form PyTorch's BCEWithLogitsLoss uses
    elementwise = ops.relu(logits) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.mean(elementwise)
