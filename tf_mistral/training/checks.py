"""What `fit` refuses and stops on, with errors that name the value and the step.

- A learning rate that is not finite: refused by `compile` and before every batch (a schedule or
  a callback may produce one later), so a NaN rate never reaches the weights.
- A loss that is not finite: `fit` stops after that batch with an error naming it (Keras'
  `TerminateOnNaN` stops without saying why, and only when asked).
"""

import math

import keras


def check_learning_rate(optimizer, when):
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

    def __init__(self, counted=None):
        super().__init__()
        self.counted = counted
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        check_learning_rate(self.model.optimizer, f"at epoch {self.epoch}, batch {batch}")

    def on_train_batch_end(self, batch, logs=None):
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
