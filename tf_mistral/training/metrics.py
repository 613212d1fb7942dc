"""Default training metrics, fed from the loss's `TokenStatistics` (no second softmax)."""

import keras
from keras import ops


class TokenRatio(keras.metrics.Metric):
    """`numerator / denominator` summed over an epoch (and over replicas); `exp` of it with
    `exponentiate` (perplexity = exp(mean token NLL)).

    `update_state(numerator, denominator)` takes float32 scalars, e.g. `stats.nll, stats.weight`.
    """

    def __init__(self, name, exponentiate=False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.exponentiate = exponentiate
        self.numerator = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="numerator")
        self.denominator = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="denominator")

    def update_state(self, numerator, denominator):
        self.numerator.assign_add(ops.cast(numerator, "float32"))
        self.denominator.assign_add(ops.cast(denominator, "float32"))

    def result(self):
        ratio = self.numerator / ops.maximum(self.denominator, 1e-9)
        return ops.exp(ratio) if self.exponentiate else ratio

    def get_config(self):
        return {**super().get_config(), "exponentiate": self.exponentiate}


def default_metrics(task):
    """[(metric, which statistics it reads)] for a head: perplexity and token accuracy for the causal
    LM, accuracy for the classifiers."""
    accuracy = (TokenRatio("accuracy"), ("correct", "count"))
    if task == "causal_lm":
        return [(TokenRatio("perplexity", exponentiate=True), ("nll", "weight")), accuracy]
    return [accuracy]
