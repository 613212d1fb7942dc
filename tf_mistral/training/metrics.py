"""Default training metrics, fed from the loss's `TokenStatistics` (no second softmax)."""

from typing import Any

import keras
from keras import ops

# The name of the count of labelled positions, per head: what the loss averages over.
COUNTED = {"causal_lm": "tokens", "sequence_classification": "examples", "token_classification": "tokens"}


class TokenRatio(keras.metrics.Metric):
    """`numerator / denominator` summed over an epoch (and over replicas); `exp` of it with
    `exponentiate` (perplexity = exp(mean token NLL)).

    `update_state(numerator, denominator)` takes float32 scalars, e.g. `stats.nll, stats.weight`.
    The result is NaN while the denominator is 0 (no labelled position seen): not a perfect 0 or 1.
    """

    def __init__(self, name: str, exponentiate: bool = False, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.exponentiate = exponentiate
        self.numerator = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="numerator")
        self.denominator = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="denominator")

    def update_state(self, numerator: Any, denominator: Any) -> None:
        self.numerator.assign_add(ops.cast(numerator, "float32"))
        self.denominator.assign_add(ops.cast(denominator, "float32"))

    def result(self) -> Any:
        ratio = ops.where(self.denominator > 0, self.numerator / self.denominator, float("nan"))
        return ops.exp(ratio) if self.exponentiate else ratio

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "exponentiate": self.exponentiate}


def default_metrics(task: str) -> list[tuple[TokenRatio, tuple[str, str]]]:
    """[(metric, which statistics it reads)] for a head: perplexity and token accuracy for the causal
    LM, accuracy for the classifiers."""
    accuracy = (TokenRatio("accuracy"), ("correct", "count"))
    if task == "causal_lm":
        return [(TokenRatio("perplexity", exponentiate=True), ("nll", "weight")), accuracy]
    return [accuracy]


def labelled_count(task: str) -> keras.metrics.Sum:
    """The count of the labelled positions the loss averaged over in the epoch (`stats.count`),
    summed over replicas: "tokens" ("examples" for sequence classification). 0 says that no batch
    had a label: the loss is then reported as NaN (`training.trainer`)."""
    return keras.metrics.Sum(COUNTED[task])
