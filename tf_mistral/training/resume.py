"""Resumable training: `ResumableBackup`, Keras' `BackupAndRestore` made exact and crash-safe.

    backup = ResumableBackup("run/backup", save_freq=100)          # every 100 batches
    train_ds = data.causal_lm_dataset(examples, tok, 512, 8, epoch=backup.epoch)
    model.fit(backup.dataset(train_ds), epochs=3, callbacks=[backup])  # rerun the same after a crash

What it adds to Keras' callback (whose restore restarts the interrupted epoch from its first batch
and whose `save_weights` merges LoRA adapters into the kernels and zeroes them on load):
- Mid-epoch resume: the checkpoint records the epoch and the batches done in it; the restored run
  starts that epoch at the next batch. The data helpers' `epoch=backup.epoch` makes each epoch's
  order depend on `(seed, epoch)` only, and `backup.dataset()` skips the batches already trained;
  the resumed run reaches the same weights as an uninterrupted one.
- Everything is saved as it is: every model variable (LoRA matrices unmerged, the dropout RNG
  state) and every optimizer variable (moments, step, gradient accumulators, loss scale), one
  safetensors file.
- Atomic: each checkpoint is written into a temporary folder that is renamed into place when
  complete; a crash while saving leaves the previous checkpoint intact. The newest complete
  checkpoint is restored; if it cannot be read, the one before it (`double_checkpoint`, default on).

Batches trained after the last checkpoint and before a crash are trained again on resume (their
updates were never saved), so `save_freq` bounds the work repeated, and nothing is skipped.
Multi-worker: give each worker its own `backup_dir` (or write from the chief only).
"""

import json
import os
import shutil
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_mistral import checkpoint, safetensors_io
from tf_mistral.training.data import with_length

STATE_FILE = "state.safetensors"
METADATA_FILE = "training_metadata.json"
_PREFIX = "checkpoint-"


def _state_variables(model):
    """Model variables (weights, LoRA, RNG state), then optimizer variables, in a stable order."""
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables)
    return variables


def save_training_state(model: keras.Model, path: str | os.PathLike) -> None:
    """Writes every model and optimizer variable to one safetensors file at `path`."""
    arrays = {}
    for i, variable in enumerate(_state_variables(model)):
        arrays[f"{i:06d}:{variable.path}"] = np.asarray(keras.ops.convert_to_numpy(variable))
    safetensors_io.write_tensors(path, arrays)


def load_training_state(model: keras.Model, path: str | os.PathLike) -> None:
    """Restores the variables written by `save_training_state`, checking count, shapes and dtypes."""
    stored = safetensors_io.SafetensorsFile(path)
    names = sorted(stored.tensors)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    variables = _state_variables(model)
    if len(names) != len(variables):
        raise safetensors_io.CheckpointError(
            f"{path} holds {len(names)} variables but this model and optimizer have {len(variables)}: "
            "was it written by another model, optimizer or LoRA setup?"
        )
    for name, variable in zip(names, variables):
        dtype, shape = stored.tensors[name][:2]
        if shape != tuple(variable.shape) or dtype != checkpoint.numpy_dtype(variable.dtype):
            raise safetensors_io.CheckpointError(
                f"{path}: {name} is {dtype} {shape} but {variable.path} is {variable.dtype} {tuple(variable.shape)}"
            )
    for name, variable in zip(names, variables):
        variable.assign(stored.read(name))


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """Backs up training every `save_freq` batches (or "epoch") and resumes where it stopped.

    Args:
        backup_dir: folder for this run's checkpoints only.
        save_freq: "epoch" or a number of batches.
        double_checkpoint: keep the previous checkpoint too, as a fallback.
        delete_checkpoint: remove `backup_dir` when `fit` completes.
    """

    def __init__(
        self, backup_dir: str, save_freq: str | int = "epoch", double_checkpoint: bool = True,
        delete_checkpoint: bool = True,
    ) -> None:
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=double_checkpoint,
                         delete_checkpoint=delete_checkpoint)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="resume_epoch")
        self.skip = tf.Variable(0, dtype=tf.int64, trainable=False, name="resume_skip")
        self._skipped = 0  # batches of the current epoch done before this run (restored epoch only)
        self._batches_done = 0  # in the current epoch, including skipped ones

    def dataset(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """`dataset` without the batches of the current epoch that the restored checkpoint had
        already trained. Its order must depend on the epoch only: build it with
        `epoch=self.epoch` (the data helpers in `tf_mistral.training.data` take it).

        When a checkpoint stopped mid-epoch, one epoch of `dataset` is counted here (the data
        pipeline runs, the model does not) so that Keras is told the full epoch length; otherwise
        it would take the shortened resumed epoch for the length of every later one.
        """
        resumable = tf.data.Dataset.from_tensors(0).flat_map(lambda _: dataset.skip(self.skip.read_value()))
        metadata = self._latest_metadata()
        if metadata is None or not metadata["batches"]:
            return resumable
        self.epoch.assign(metadata["epoch"])
        return with_length(resumable, int(dataset.reduce(np.int64(0), lambda count, _: count + 1)))

    # ---- Keras hooks ----------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._skipped = 0
        self.skip.assign(0)
        if os.path.isdir(self.backup_dir):  # a save interrupted by a crash
            for name in os.listdir(self.backup_dir):
                if name.startswith("tmp-"):
                    shutil.rmtree(os.path.join(self.backup_dir, name), ignore_errors=True)
        for folder in self._checkpoints()[::-1]:
            try:
                load_training_state(self.model, os.path.join(folder, STATE_FILE))
            except (OSError, safetensors_io.CheckpointError):
                if folder == self._checkpoints()[0]:
                    raise
                continue  # unreadable: fall back to the previous checkpoint
            with open(os.path.join(folder, METADATA_FILE), encoding="utf-8") as f:
                metadata = json.load(f)
            self.model._initial_epoch = metadata["epoch"]
            self._current_epoch = metadata["epoch"]
            self._skipped = metadata["batches"]
            self.skip.assign(metadata["batches"])
            return

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch.assign(epoch)
        self._current_epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._current_epoch = epoch + 1
        self._skipped = 0
        self.skip.assign(0)
        self._last_batch_seen = 0
        self._batches_done = 0
        if self.save_freq == "epoch":
            self._save_model()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches_done = self._skipped + batch + 1
        if self._should_save_on_batch(batch):
            self._save_model()

    # ---- checkpoints ----------------------------------------------------------------------------

    def _checkpoints(self):
        """Complete checkpoint folders, oldest first."""
        if not os.path.isdir(self.backup_dir):
            return []
        names = sorted(n for n in os.listdir(self.backup_dir) if n.startswith(_PREFIX))
        return [os.path.join(self.backup_dir, n) for n in names]

    def _latest_metadata(self):
        folders = self._checkpoints()
        if not folders:
            return None
        with open(os.path.join(folders[-1], METADATA_FILE), encoding="utf-8") as f:
            return json.load(f)

    def _save_model(self):
        batches = self._batches_done if self.save_freq != "epoch" else 0
        name = f"{_PREFIX}{self._current_epoch:05d}-{batches:09d}"
        os.makedirs(self.backup_dir, exist_ok=True)
        temporary = os.path.join(self.backup_dir, f"tmp-{name}")
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary)
        save_training_state(self.model, os.path.join(temporary, STATE_FILE))
        with open(os.path.join(temporary, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump({"epoch": self._current_epoch, "batches": batches}, f)
        final = os.path.join(self.backup_dir, name)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        keep = 2 if self.double_checkpoint else 1
        for old in self._checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
