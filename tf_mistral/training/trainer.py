"""`compile()` / `fit()` defaults for the heads: no loss to write, labels from `y` or `x["labels"]`.

The models' forward is untouched: this mixin only overrides Keras' `compute_loss`,
`compute_metrics` and `metrics`, so `fit`, `evaluate`, mixed precision, gradient accumulation
and `tf.distribute` strategies run through Keras' own train step.

- Labels: `fit(x, y)` uses `y`; `fit({"input_ids", "attention_mask", "labels"})` reads
  `x["labels"]`; a causal LM given neither trains on its inputs (padding ignored).
- Loss: the head's cross-entropy in float32 (`tf_mistral.training.losses`), -100 ignored. Under a
  distribution strategy it is normalised by the labelled positions of the *global* batch, so
  the loss and gradients equal the single-device run's even when replicas hold different numbers
  of labelled tokens.
- Metrics: perplexity and token accuracy (causal LM), accuracy (classifiers), from the same
  statistics as the loss.
- `compile(loss=...)` replaces the default; the loss then gets `(labels, logits)`.
"""

import numpy as np
import tensorflow as tf
from keras import ops

from tf_mistral.checkpoint import numpy_dtype
from tf_mistral.training import lora
from tf_mistral.training.losses import IGNORE_INDEX, STATISTICS
from tf_mistral.training.metrics import default_metrics


class _Defaults:
    """What `compile()` chose; a plain object so that Keras does not track it as state."""

    def __init__(self, task, default_loss, metrics, class_weight):
        self.task = task
        self.default_loss = default_loss
        self.metrics = metrics  # [(metric, (numerator field, denominator field))]
        self.class_weight = class_weight


def _labels(x, y):
    if y is not None:
        return y
    if isinstance(x, dict):
        return x.get("labels")
    return None


def _logits(y_pred):
    return y_pred["logits"] if isinstance(y_pred, dict) else y_pred


def _global_sum(value):
    """Sum over the replicas of a distribution strategy (identity on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def class_weight_vector(class_weight, num_labels):
    """float32 `[num_labels]` from a dict `{class: weight}` (missing classes weigh 1) or a sequence."""
    if isinstance(class_weight, dict):
        bad = [k for k in class_weight if not 0 <= int(k) < num_labels]
        if bad:
            raise ValueError(f"class_weight has classes {bad} outside [0, {num_labels})")
        vector = np.ones(num_labels, np.float32)
        for label, weight in class_weight.items():
            vector[int(label)] = weight
        return vector
    vector = np.asarray(class_weight, np.float32)
    if vector.shape != (num_labels,):
        raise ValueError(f"class_weight has {vector.size} entries but the model has {num_labels} labels")
    return vector


def _check_optimizer_precision(model):
    """Keras' Adam family computes `beta_2 ** step` in the variable's dtype; 0.999 rounds to 1.0 in
    bfloat16, so bfloat16 weights would silently never move. Say so instead."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    beta_2 = getattr(optimizer, "beta_2", None)
    if not isinstance(beta_2, (int, float)):
        return
    stuck = [(v.path, v.dtype) for v in model.trainable_variables
             if v.dtype != "float32" and float(np.asarray(beta_2, dtype=numpy_dtype(v.dtype))) == 1.0]
    if stuck:
        raise ValueError(
            f"{type(optimizer).__name__}(beta_2={beta_2}) cannot train {stuck[0][1]} weights such as {stuck[0][0]}: "
            "beta_2 rounds to 1.0 in that dtype and Keras' update is then zero. Load the model with "
            "dtype='mixed_bfloat16' (float32 weights, bfloat16 compute), or train float32 LoRA adapters "
            "(enable_lora), or lower beta_2 (e.g. 0.99)"
        )


class TrainingMixin:
    """Training defaults; each head sets `training_task` to a key of `losses.STATISTICS`."""

    training_task = None

    def compile(self, optimizer="adamw", loss=None, metrics=None, class_weight=None, **kwargs):
        """Keras `compile`, with the head's loss and metrics when `loss` / `metrics` are None.

        Args:
            optimizer: as Keras (e.g. `keras.optimizers.AdamW(2e-4, gradient_accumulation_steps=4)`).
                Under a "mixed_float16" policy Keras wraps it in a `LossScaleOptimizer`.
            loss: None for the head's default (see the module docstring), or any Keras loss,
                called as `loss(labels, logits)`.
            metrics: None for the defaults; a list for Keras' compiled metrics on `(labels, logits)`.
            class_weight: classifiers only: `{class: weight}` or `[num_labels]` weights; the loss
                is then `sum(w * nll) / sum(w)` over labelled positions, as PyTorch's weighted
                cross-entropy. (Keras' `fit(class_weight=...)` also works for sequence
                classification with labels passed as `y`.)
            **kwargs: the rest of Keras' `compile` (`jit_compile`, `steps_per_execution`, ...).
        """
        if class_weight is not None:
            if self.training_task == "causal_lm":
                raise ValueError("class_weight is for the classification heads, not the causal LM")
            class_weight = ops.convert_to_tensor(class_weight_vector(class_weight, self.config.num_labels))
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        _check_optimizer_precision(self)
        self._training_defaults = _Defaults(
            self.training_task,
            default_loss=loss is None,
            metrics=default_metrics(self.training_task) if loss is None and metrics is None else [],
            class_weight=class_weight,
        )

    @property
    def metrics(self):
        defaults = getattr(self, "_training_defaults", None)
        extra = [metric for metric, _ in defaults.metrics] if defaults is not None else []
        return super().metrics + extra

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels, logits = _labels(x, y), _logits(y_pred)
        defaults = self._training_defaults
        if not defaults.default_loss:
            return super().compute_loss(x, labels, logits, sample_weight, training=training)
        if labels is None:
            labels = self._labels_from_inputs(x)
        stats = STATISTICS[defaults.task](labels, logits, sample_weight, defaults.class_weight)
        for metric, (numerator, denominator) in defaults.metrics:
            metric.update_state(getattr(stats, numerator), getattr(stats, denominator))
        denominator = ops.maximum(ops.stop_gradient(_global_sum(stats.weight)), 1e-9)
        loss = stats.nll / denominator  # this replica's share; the replicas' shares sum to the mean
        for extra in self.losses:  # regularizers, add_loss (none by default)
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, _labels(x, y), _logits(y_pred), sample_weight=sample_weight)

    def train_step(self, data):
        """Keras' train step, run only once its batch has arrived.

        After the last batch of a dataset whose length tf.data cannot know (packing, bucketing,
        `filter`), Keras calls the step once more and stops at the end-of-data error of its
        `get_next`. Without the dependency, the optimizer's step counter (`iterations`, which no
        batch value feeds) was incremented by that call: one step too many per epoch, which
        shifts AdamW's bias correction and learning-rate schedules and made a resumed run differ.
        """
        with tf.control_dependencies(tf.nest.flatten(data)):
            return super().train_step(data)

    def _labels_from_inputs(self, x):
        """A causal LM with no labels learns its inputs: the input ids, -100 where attention_mask is 0."""
        if self.training_task != "causal_lm":
            raise ValueError(
                f"{type(self).__name__} needs labels: fit(x, y=labels) or a dataset of "
                "{'input_ids', 'attention_mask', 'labels'} dicts"
            )
        if not isinstance(x, dict):
            return x
        input_ids = x["input_ids"]
        if x.get("attention_mask") is None:
            return input_ids
        return ops.where(ops.cast(x["attention_mask"], "bool"), ops.cast(input_ids, "int32"), IGNORE_INDEX)

    # ---- LoRA -----------------------------------------------------------------------------------

    def enable_lora(self, rank, target_modules=lora.DEFAULT_TARGETS, lora_alpha=None):
        """LoRA on the chosen projections; everything else frozen. See `training.lora.enable_lora`."""
        return lora.enable_lora(self, rank, target_modules, lora_alpha)

    def save_lora_weights(self, path):
        """Writes the LoRA adapters to the folder `path` (PEFT layout); `save_pretrained` merges instead."""
        lora.save_lora_weights(self, path)

    def load_lora_weights(self, path):
        """Loads adapters from `save_lora_weights`, enabling LoRA to match when needed."""
        return lora.load_lora_weights(self, path)

