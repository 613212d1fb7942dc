"""`compile()` / `fit()` defaults for the heads: no loss to write, labels from `y` or `x["labels"]`.

The models' forward is untouched: this mixin overrides Keras' `compute_loss`, `compute_metrics`
and `metrics`, and wraps Keras' own train and test steps, so `fit`, `evaluate`, mixed precision,
gradient accumulation and `tf.distribute` strategies run as in any Keras model.

- Labels: `fit(x, y)` uses `y`; `fit({"input_ids", "attention_mask", "labels"})` reads
  `x["labels"]`; a causal LM given neither trains on its inputs (padding ignored).
- Loss: the head's cross-entropy in float32 (`tf_mistral.training.losses`), -100 ignored. Under a
  distribution strategy it is normalised by the labelled positions of the *global* batch, so
  the loss and gradients equal the single-device run's even when replicas hold different numbers
  of labelled tokens.
- Metrics: perplexity and token accuracy (causal LM), accuracy (classifiers), from the same
  statistics as the loss, and the count of labelled positions the loss averaged over ("tokens";
  "examples" for sequence classification).
- A batch with no labelled position (all labels -100, or all weights 0) has nothing to learn and
  no loss: with the default loss, `fit` skips it (no optimizer step, so AdamW's weight decay and
  momentum do not move the weights; `iterations` unchanged) and `fit` / `evaluate` leave it out of
  the loss and metrics. Until a labelled position is seen, `loss`, `perplexity` and `accuracy`
  are NaN and the count 0, never a perfect score.
- `compile(loss=...)` replaces the default; the loss then gets `(labels, logits)`.
- Guards (`tf_mistral.training.checks`): `compile` refuses a learning rate that is not finite;
  `fit` refuses ids and labels outside the model's ranges, naming the value and where it is, and
  stops with an error naming the batch when the learning rate or the loss stops being finite.
"""

from collections.abc import Iterable, Mapping, Sequence
import os
from typing import Any

import keras
from keras import ops
import numpy as np
import tensorflow as tf

from tf_mistral.checkpoint import numpy_dtype
from tf_mistral.labels import IGNORE_INDEX
from tf_mistral.training import checks, lora
from tf_mistral.training.losses import label_weights, statistics
from tf_mistral.training.metrics import default_metrics, labelled_count


class _Defaults:
    """What `compile()` chose; a plain object so that Keras does not track it as state."""

    def __init__(self, task, default_loss, metrics, counted, class_weight):
        self.task = task
        self.default_loss = default_loss
        self.metrics = metrics  # [(metric, (numerator field, denominator field))]
        self.counted = counted  # the count of labelled positions (a Sum metric) with the default loss
        self.class_weight = class_weight


def _given_labels(x, y):
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


def _run_if(condition, function, *args):
    """Runs `function(*args)` for its effects if `condition`, a bool scalar equal on every replica.

    With several replicas the branch is taken in cross-replica context: the optimizer's update
    synchronises the replicas (`merge_call`), which TensorFlow refuses inside a replica's `tf.cond`;
    Keras' `LossScaleOptimizer` skips a step the same way.
    """

    def run():
        function(*args)

    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync == 1:
        tf.cond(condition, run, lambda: None)
        return

    def cross_replica(strategy, condition, *args):
        def run_on_each_replica():
            strategy.extended.call_for_each_replica(function, args=args)

        tf.cond(strategy.experimental_local_results(condition)[0], run_on_each_replica, lambda: None)

    context.merge_call(cross_replica, args=(condition, *args))


def class_weight_vector(
    class_weight: Mapping[int, float] | Sequence[float] | np.ndarray, num_labels: int
) -> np.ndarray:
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
    """Training defaults; each head sets `training_task` to a key of `losses.TARGETS`."""

    training_task = None

    def compile(
        self, optimizer: str | keras.optimizers.Optimizer = "adamw", loss: Any = None, metrics: list[Any] | None = None,
        class_weight: Mapping[int, float] | Sequence[float] | np.ndarray | None = None, **kwargs: Any,
    ) -> None:
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
        checks.check_learning_rate(self.optimizer, "in compile()")
        self._training_defaults = _Defaults(
            self.training_task,
            default_loss=loss is None,
            metrics=default_metrics(self.training_task) if loss is None and metrics is None else [],
            counted=labelled_count(self.training_task) if loss is None else None,
            class_weight=class_weight,
        )

    def fit(
        self, x: Any = None, y: Any = None, *args: Any, callbacks: list[keras.callbacks.Callback] | None = None,
        validation_data: Any = None, **kwargs: Any,
    ) -> keras.callbacks.History:
        """Keras `fit`, with the guards of `training.checks`.

        - An id or label of `x` / `y` / `validation_data` outside the model's ranges: ValueError
          naming the value, where it is and the range, before a step reads it.
        - A learning rate (checked before each batch) or a loss (after it) that is not finite:
          an error naming the batch (`checks.StopOnNonFinite`, the first callback).
        """
        x, y = self._checked_inputs(x, y)
        if validation_data is not None:
            val_x, val_y, val_weight = keras.utils.unpack_x_y_sample_weight(validation_data)
            validation_data = keras.utils.pack_x_y_sample_weight(*self._checked_inputs(val_x, val_y), val_weight)
        defaults = getattr(self, "_training_defaults", None)
        counted = defaults.counted.name if defaults is not None and defaults.counted is not None else None
        callbacks = [checks.StopOnNonFinite(counted), *(callbacks or [])]
        try:
            return super().fit(x, y, *args, callbacks=callbacks, validation_data=validation_data, **kwargs)
        except tf.errors.InvalidArgumentError as error:  # a dataset's check (checks.checked_dataset)
            message = checks.refused_input(error)
            if message is None:
                raise
            raise ValueError(message) from None

    def _checked_inputs(self, x, y):
        """`(x, y)` with their ids and labels checked against the model's ranges: in-memory arrays
        now, a `tf.data.Dataset` as its batches are read (`training.checks`)."""
        ranges = checks.id_ranges(self.training_task, self.config.vocab_size, self.config.num_labels)
        if isinstance(x, tf.data.Dataset):
            return checks.checked_dataset(x, ranges), y
        checks.check_arrays(x, y, ranges)
        return x, y

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        defaults = getattr(self, "_training_defaults", None)
        if defaults is None:
            return super().metrics
        counted = [defaults.counted] if defaults.counted is not None else []
        return super().metrics + [metric for metric, _ in defaults.metrics] + counted

    def get_metrics_result(self) -> dict[str, Any]:
        """Keras' metric results; `loss` is NaN while the labelled-position count is 0 (every batch
        so far skipped as empty), where Keras' mean over no batch would report a perfect 0."""
        results = super().get_metrics_result()
        defaults = getattr(self, "_training_defaults", None)
        if defaults is not None and defaults.counted is not None:
            results["loss"] = ops.where(defaults.counted.result() > 0, results["loss"], float("nan"))
        return results

    def compute_loss(
        self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
    ) -> tf.Tensor:
        logits = _logits(y_pred)
        defaults = self._training_defaults
        if not defaults.default_loss:
            return super().compute_loss(x, _given_labels(x, y), logits, sample_weight, training=training)
        stats = statistics(defaults.task, self._labels(x, y), logits, sample_weight, defaults.class_weight)
        for metric, (numerator, denominator) in defaults.metrics:
            metric.update_state(getattr(stats, numerator), getattr(stats, denominator))
        defaults.counted.update_state(stats.count)
        # This replica's share: the replicas' shares sum to the mean. NaN for a batch with no
        # labelled position (0 / 0); the train and test steps skip those.
        loss = stats.nll / ops.stop_gradient(_global_sum(stats.weight))
        for extra in self.losses:  # regularizers, add_loss (none by default)
            loss = loss + self._aggregate_additional_loss(extra)
        return loss

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> dict[str, Any]:
        return super().compute_metrics(x, _given_labels(x, y), _logits(y_pred), sample_weight=sample_weight)

    def train_step(self, data: Any) -> dict[str, Any]:
        """Keras' train step, run only once its batch has arrived, and only if it has labels.

        After the last batch of a dataset whose length tf.data cannot know (packing, bucketing,
        `filter`), Keras calls the step once more and stops at the end-of-data error of its
        `get_next`. Without the dependency, the optimizer's step counter (`iterations`, which no
        batch value feeds) was incremented by that call: one step too many per epoch, which
        shifts AdamW's bias correction and learning-rate schedules and made a resumed run differ.

        With the default loss, a batch with no labelled position is skipped: no optimizer step.
        """
        return self._step_if_labelled(super().train_step, data)

    def test_step(self, data: Any) -> dict[str, Any]:
        """Keras' test step; with the default loss, a batch with no labelled position is left out."""
        return self._step_if_labelled(super().test_step, data)

    def _step_if_labelled(self, step, data):
        """`step(data)` (Keras' train or test step) once `data` has arrived; with the default loss,
        only if the global batch has labelled positions (a loss denominator other than 0). -> logs."""
        defaults = self._training_defaults
        with tf.control_dependencies(tf.nest.flatten(data)):
            if not defaults.default_loss:
                return step(data)
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            _, weight = label_weights(defaults.task, self._labels(x, y), sample_weight, defaults.class_weight)
            _run_if(ops.not_equal(_global_sum(ops.sum(weight)), 0), step, data)  # NaN weights run (and stop fit)
        return self.get_metrics_result()

    def _labels(self, x, y):
        """The batch's labels: `y`, else `x["labels"]`, else (causal LM) the inputs themselves."""
        labels = _given_labels(x, y)
        return self._labels_from_inputs(x) if labels is None else labels

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

    def enable_lora(
        self, rank: int, target_modules: str | Iterable[str] | None = lora.DEFAULT_TARGETS,
        lora_alpha: float | None = None,
    ) -> keras.Model:
        """LoRA on the chosen projections; everything else frozen. See `training.lora.enable_lora`."""
        return lora.enable_lora(self, rank, target_modules, lora_alpha)

    def save_lora_weights(self, path: str | os.PathLike) -> None:
        """Writes the LoRA adapters to the folder `path` (PEFT layout); `save_pretrained` merges instead."""
        lora.save_lora_weights(self, path)

    def load_lora_weights(self, path: str | os.PathLike) -> keras.Model:
        """Loads adapters from `save_lora_weights`, enabling LoRA to match when needed."""
        return lora.load_lora_weights(self, path)

