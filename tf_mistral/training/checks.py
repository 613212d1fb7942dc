"""What `fit` refuses and stops on, with errors that name the value and the step.

- Ids and labels outside the model's ranges: in-memory arrays are checked before training
  starts; a `tf.data.Dataset` gets a check in its pipeline (tf.data runs outside XLA, so the check
  holds under `jit_compile=True`, where the embedding lookup would silently clamp). Labels may
  also be -100 (no loss). Otherwise CPU kernels fail with a raw graph error and GPU ones compute
  on zeros.
- A learning rate that is not finite: refused by `compile` and before every batch (a schedule or
  a callback may produce one later), so a NaN rate never reaches the weights.
- A loss that is not finite: `fit` stops after that batch with an error naming it (Keras'
  `TerminateOnNaN` stops without saying why, and only when asked).
"""

import collections
from collections.abc import Sequence
import math
import re
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_mistral.labels import IGNORE_INDEX
from tf_mistral.training.data import with_length

IdRange = collections.namedtuple("IdRange", ["name", "size", "ignorable", "bound"])
IdRange.__doc__ = """The values one input may hold: [0, size), and -100 when `ignorable`.

name: the input's key ("input_ids", "labels"); bound: what the size is, for the message
("the vocabulary has 32000 ids").
"""

# How the messages of `_out_of_range` start, to find them inside TensorFlow's error text.
_REFUSED = re.compile(r"assertion failed: \[((?:input_ids|labels) contain [^\]]*)\]")


def id_ranges(task: str, vocab_size: int, num_labels: int) -> list[IdRange]:
    """The `IdRange`s of the inputs of the head `task`: input ids, and labels (ids for the causal LM,
    classes for the classifiers)."""
    ids = f"the vocabulary has {vocab_size} ids"
    if task == "causal_lm":
        labels = IdRange("labels", vocab_size, True, f"{ids} (labels are ids, or -100 for no loss)")
    else:
        labels = IdRange("labels", num_labels, True,
                         f"the model has {num_labels} labels (0 to {num_labels - 1}, or -100 for no loss)")
    return [IdRange("input_ids", vocab_size, False, ids), labels]


def _named_inputs(x, y):
    """{"input_ids": ..., "labels": ...} of a batch (or of arrays), for those it has."""
    named = {}
    if isinstance(x, dict):
        named.update((key, x[key]) for key in ("input_ids", "labels") if x.get(key) is not None)
    elif x is not None:
        named["input_ids"] = x
    if y is not None:
        named["labels"] = y
    return named


def _out_of_range(values, id_range, batch=None):
    """tf.string scalar: "" if every value of the int `values` (`[rows]` or `[rows, columns]`) is
    in `id_range`, else a sentence naming the first one that is not and where it is (`batch`: the
    batch's index in this pass over its dataset, int64 scalar, or None for whole arrays)."""
    values = tf.cast(values, tf.int64)
    bad = (values < 0) | (values >= id_range.size)
    if id_range.ignorable:
        bad &= tf.not_equal(values, IGNORE_INDEX)
    found = tf.where(bad)  # [bad values, rank]
    place = ", ".join(f"{axis} {{}}" for axis in ("row", "column")[: values.shape.rank])
    if batch is not None:
        place = f"batch {{}}, {place}"

    def sentence():
        first = found[0]
        where = ([batch] if batch is not None else []) + tf.unstack(first)
        template = f"{id_range.name} contain {{}} at {place}, but {id_range.bound}"
        return tf.strings.format(template, (tf.gather_nd(values, first), *where))

    return tf.cond(tf.size(found) > 0, sentence, lambda: tf.constant(""))


def check_arrays(x: Any, y: Any, ranges: Sequence[IdRange]) -> None:
    """Raises ValueError naming the first id or label of in-memory `x` / `y` (numpy arrays or
    tensors, `x` possibly a dict) outside `ranges` (`id_ranges`). Other inputs (generators) pass."""
    by_name = {r.name: r for r in ranges}
    for name, values in _named_inputs(x, y).items():
        if not isinstance(values, (np.ndarray, tf.Tensor)):
            continue
        message = _out_of_range(values, by_name[name]).numpy().decode()
        if message:
            raise ValueError(message)


def checked_dataset(dataset: tf.data.Dataset, ranges: Sequence[IdRange]) -> tf.data.Dataset:
    """`dataset` whose batches fail, with the message of `_out_of_range`, when an id or label is
    outside `ranges` (`id_ranges`; `refused_input` turns that failure back into the message).
    Batches are dicts, `x`, `(x, y)` or `(x, y, sample_weight)` as Keras takes them; the reported
    length is kept."""
    by_name = {r.name: r for r in ranges}

    def check(batch, element):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(element)
        messages = [_out_of_range(values, by_name[name], batch) for name, values in _named_inputs(x, y).items()]
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(m, ""), [m]) for m in messages]):
            return tf.nest.map_structure(tf.identity, element)

    return with_length(dataset.enumerate().map(check), dataset.cardinality())


def refused_input(error: BaseException) -> str | None:
    """The message of `checked_dataset`'s failure inside a TensorFlow error, or None."""
    match = _REFUSED.search(str(error))
    return match.group(1) if match else None


def check_learning_rate(optimizer: keras.optimizers.Optimizer, when: str) -> None:
    """Raises ValueError unless the learning rate that `optimizer` would use now (a schedule's value
    at the current step) is finite. `when` places it in the message ("in compile()")."""
    rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    if math.isfinite(rate):
        return
    name = type(getattr(optimizer, "inner_optimizer", optimizer)).__name__
    step = int(keras.ops.convert_to_numpy(optimizer.iterations))
    raise ValueError(
        f"the learning rate of {name} is {rate} {when} (optimizer step {step}): it must be a finite "
        "number, or one step would make every weight NaN. Check the value or the schedule given to the optimizer"
    )


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops `fit` with an error at the first batch whose learning rate (checked before it) or loss
    (checked after it) is not finite.

    Args:
        counted: the name, in the logs, of the count of labelled positions trained in the epoch,
            or None. While it is 0 the loss is NaN by design (no batch had a label) and not checked.
    """

    def __init__(self, counted: str | None = None) -> None:
        super().__init__()
        self.counted = counted
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        check_learning_rate(self.model.optimizer, f"at epoch {self.epoch}, batch {batch}")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        loss = logs.get("loss")
        if loss is None or math.isfinite(loss) or (self.counted is not None and logs.get(self.counted) == 0):
            return
        optimizer = self.model.optimizer
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        raise FloatingPointError(
            f"fit stopped: the loss is {loss} at epoch {self.epoch}, batch {batch} (optimizer step {step}), "
            f"with a learning rate of {rate:g}. If the loss rose before, lower the learning rate; else check "
            "that batch's inputs and the weights, and under mixed_float16 overflows (mixed_bfloat16 has "
            "float32's range). The weights may hold that batch's non-finite update: restart from a checkpoint "
            "(ResumableBackup) or reload the model"
        )
