"""Interrupted training resumes where it stopped: a run killed mid-epoch and restarted from its
backup ends with the weights of a run that was never interrupted."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import fixture_path
from tf_mistral import TFMistralForCausalLM, safetensors_io
from tf_mistral.tokenizer import MistralTokenizer
from tf_mistral.training import ResumableBackup, causal_lm_dataset, lora

EPOCHS = 3  # the resumed run ends with a full epoch after the shortened one it resumes
SEQUENCE_LENGTH, BATCH_SIZE = 32, 2
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Raises after batch `batch` of epoch `epoch`, like a preempted machine."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise Interrupt(f"interrupted after batch {batch} of epoch {self.epoch}")


@pytest.fixture(scope="module")
def documents():
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, rng.integers(4, 30))) for _ in range(40)]


@pytest.fixture(scope="module")
def tok():
    return MistralTokenizer.default("v1")


def new_model(with_lora):
    model = TFMistralForCausalLM.from_pretrained(fixture_path("tiny_window"), progress=False)
    if with_lora:
        model.enable_lora(4)
        rng = np.random.default_rng(1)  # the same adapters in every run
        for dense in lora.lora_layers(model).values():
            dense.lora_kernel_a.assign(rng.normal(0, 0.1, dense.lora_kernel_a.shape).astype(np.float32))
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    return model


def packed_data(documents, tok, epoch):
    """The packed batches of the run, each epoch in an order that depends on `epoch` only."""
    data = causal_lm_dataset(documents, tok, SEQUENCE_LENGTH, BATCH_SIZE, seed=7, epoch=epoch)
    return data.map(lambda b: {k: tf.where(v > 0, v % 1000, v) for k, v in b.items()})  # the fixture's vocabulary


def train(backup_dir, documents, tok, with_lora=False, callbacks=()):
    """One `fit` call as a training script makes it: model, backup, data, fit."""
    model = new_model(with_lora)
    backup = ResumableBackup(str(backup_dir), save_freq=2)
    data = packed_data(documents, tok, backup.epoch)
    history = model.fit(backup.dataset(data), epochs=EPOCHS, callbacks=[backup, *callbacks], verbose=0)
    return model, history


@pytest.fixture(scope="module")
def uninterrupted(documents, tok, tmp_path_factory):
    """`uninterrupted(with_lora)` -> the model of a run that was never interrupted."""
    models = {}

    def run(with_lora=False):
        if with_lora not in models:
            backup_dir = tmp_path_factory.mktemp("uninterrupted") / "backup"
            models[with_lora] = train(backup_dir, documents, tok, with_lora)[0]
            assert not backup_dir.exists()  # removed once fit completes
        return models[with_lora]

    return run


def assert_same_training(resumed, reference):
    """The same optimizer steps (nothing lost, nothing repeated) and the same weights."""
    assert int(resumed.optimizer.iterations.numpy()) == int(reference.optimizer.iterations.numpy())
    for x, y in zip(resumed.weights, reference.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=2e-5, err_msg=x.path)


@pytest.mark.parametrize("with_lora", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full", "lora"])
def test_interrupted_run_resumes_to_the_uninterrupted_weights(with_lora, documents, tok, uninterrupted, tmp_path):
    reference = uninterrupted(with_lora)
    batches = int(packed_data(documents, tok, epoch=0).reduce(0, lambda count, _: count + 1))
    assert batches >= 6
    assert int(reference.optimizer.iterations.numpy()) == EPOCHS * batches  # one optimizer step per batch

    backup_dir = tmp_path / "backup"
    with pytest.raises(Interrupt):
        train(backup_dir, documents, tok, with_lora, callbacks=[InterruptAt(epoch=1, batch=2)])
    saved = os.listdir(backup_dir)
    assert 1 <= len(saved) <= 2 and all(name.startswith("checkpoint-") for name in saved)  # double_checkpoint
    resumed, resumed_history = train(backup_dir, documents, tok, with_lora)

    assert resumed_history.epoch == [1, 2]  # epoch 0 was complete; epoch 1 restarted at its 4th batch
    start = new_model(with_lora)
    assert max(np.abs(w.numpy() - s.numpy()).max() for w, s in zip(reference.weights, start.weights)) > 1e-2
    assert_same_training(resumed, reference)


@pytest.mark.slow
def test_a_crash_while_saving_keeps_the_previous_checkpoint(documents, tok, uninterrupted, tmp_path, monkeypatch):
    reference = uninterrupted()
    backup_dir = tmp_path / "backup"
    write = safetensors_io.write_tensors
    calls = []

    def write_then_crash(path, arrays):
        calls.append(path)
        if len(calls) == 3:  # the third save dies half-way through its file
            with open(path + ".tmp", "wb") as f:
                f.write(b"partial")
            raise Interrupt("power cut while saving")
        write(path, arrays)

    monkeypatch.setattr(safetensors_io, "write_tensors", write_then_crash)
    with pytest.raises(Interrupt):
        train(backup_dir, documents, tok)
    assert any(name.startswith("tmp-") for name in os.listdir(backup_dir))
    monkeypatch.setattr(safetensors_io, "write_tensors", write)
    resumed, _ = train(backup_dir, documents, tok)
    assert_same_training(resumed, reference)


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous(documents, tok, uninterrupted, tmp_path):
    reference = uninterrupted()
    backup_dir = tmp_path / "backup"
    with pytest.raises(Interrupt):
        train(backup_dir, documents, tok, callbacks=[InterruptAt(epoch=1, batch=3)])
    newest = sorted(os.listdir(backup_dir))[-1]
    state = backup_dir / newest / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])  # a truncated file: disk full, bad sector
    resumed, _ = train(backup_dir, documents, tok)
    assert_same_training(resumed, reference)
