"""LoRA through Keras' `Dense.enable_lora`: what trains, what is saved, what loads, int8 bases."""

import json

import keras
import numpy as np
import pytest

from conftest import fixture_path
from tf_mistral import TFMistralForCausalLM, TFMistralForSequenceClassification
from tf_mistral.checkpoint import load_weights
from tf_mistral.safetensors_io import CheckpointError, SafetensorsFile
from tf_mistral.training import lora


def fresh(cls=TFMistralForCausalLM, name="tiny_window", **kwargs):
    return cls.from_pretrained(fixture_path(name), progress=False, **kwargs)


def ids(shape=(8, 24), seed=0):
    return np.random.default_rng(seed).integers(3, 1000, shape).astype(np.int32)


def randomize_adapters(model, seed=0):
    """B starts at zero (LoRA is the identity then); give it values so that tests can see it."""
    rng = np.random.default_rng(seed)
    for dense in lora.lora_layers(model).values():
        dense.lora_kernel_b.assign(rng.normal(0, 0.05, dense.lora_kernel_b.shape).astype(np.float32))


@pytest.mark.parametrize("targets, per_layer", [(None, ("q_proj", "v_proj")), ("all", lora.ALL_PROJECTIONS),
                                                (("gate_proj", "down_proj"), ("gate_proj", "down_proj"))])
def test_only_the_adapters_of_the_chosen_projections_train(targets, per_layer):
    model = fresh()
    model.enable_lora(8) if targets is None else model.enable_lora(8, target_modules=targets)
    expected = {f"{dense.path}/lora_kernel_{ab}" for dense in lora.lora_layers(model).values() for ab in "ab"}
    assert {w.path for w in model.trainable_weights} == expected
    assert len(expected) == 2 * model.config.num_hidden_layers * len(per_layer)
    assert sorted({name.rsplit(".", 1)[1] for name in lora.lora_layers(model)}) == sorted(per_layer)


def test_a_classifier_also_trains_its_fresh_score_head():
    model = fresh(TFMistralForSequenceClassification, "tiny_seqcls")
    model.enable_lora(4)
    assert any(w.path.endswith("score/kernel") for w in model.trainable_weights)


def test_unknown_target_and_second_enable_are_errors():
    model = fresh()
    with pytest.raises(ValueError, match="choose among"):
        model.enable_lora(4, target_modules=("query",))
    model.enable_lora(4)
    with pytest.raises(ValueError, match="already enabled"):
        model.enable_lora(4)


def test_lora_starts_as_the_base_model_and_fit_moves_only_adapters():
    model, x = fresh(), ids()
    before = model(x).logits.numpy()
    frozen = {w.path: w.numpy() for w in model.weights}
    model.enable_lora(4, target_modules="all")
    np.testing.assert_array_equal(model(x).logits.numpy(), before)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    history = model.fit({"input_ids": x}, batch_size=4, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    for w in model.weights:
        if "lora_kernel" in w.path:
            continue
        np.testing.assert_array_equal(w.numpy(), frozen[w.path], err_msg=w.path)
    assert np.abs(model(x).logits.numpy() - before).max() > 0.05


def test_adapters_are_saved_in_peft_layout_and_load_back(tmp_path):
    model, x = fresh(), ids((2, 16))
    model.enable_lora(4, target_modules=("q_proj", "o_proj"), lora_alpha=8)
    randomize_adapters(model)
    model.save_lora_weights(tmp_path)
    config = json.loads((tmp_path / lora.ADAPTER_CONFIG).read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    assert config["target_modules"] == ["o_proj", "q_proj"]
    stored = SafetensorsFile(str(tmp_path / lora.ADAPTER_WEIGHTS)).tensors
    q = model.model.decoder_layers[1].self_attn.q_proj
    assert stored["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"][1] == (4, q.kernel.shape[0])
    assert stored["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"][1] == (q.kernel.shape[1], 4)
    assert len(stored) == 2 * 2 * 2

    restored = fresh()
    restored.load_lora_weights(tmp_path)  # enables LoRA with the file's rank, alpha, targets
    assert restored.model.decoder_layers[0].self_attn.o_proj.lora_alpha == 8
    np.testing.assert_allclose(restored(x).logits.numpy(), model(x).logits.numpy(), atol=1e-6)


def test_classifier_adapters_carry_the_score_head(tmp_path):
    model = fresh(TFMistralForSequenceClassification, "tiny_seqcls")
    model.enable_lora(4)
    randomize_adapters(model)
    model.score.kernel.assign(model.score.kernel.numpy() + 0.5)
    model.save_lora_weights(tmp_path)
    restored = fresh(TFMistralForSequenceClassification, "tiny_seqcls")
    restored.load_lora_weights(tmp_path)
    x = ids((3, 10))
    np.testing.assert_allclose(restored(x).logits.numpy(), model(x).logits.numpy(), atol=1e-5)


def test_adapters_of_another_rank_are_refused(tmp_path):
    model = fresh()
    model.enable_lora(4)
    model.save_lora_weights(tmp_path)
    other = fresh()
    other.enable_lora(8)
    with pytest.raises(ValueError, match="rank 4"):
        other.load_lora_weights(tmp_path)


def test_loading_a_checkpoint_into_a_lora_model_says_what_to_do():
    model = fresh()
    model.enable_lora(4)
    with pytest.raises(CheckpointError, match="LoRA enabled.*fresh model"):
        load_weights(model, fixture_path("tiny_window"), progress=False)


def test_an_int8_quantized_base_trains_float_adapters():
    model, x = fresh(), ids()
    model.quantize("int8")
    model.enable_lora(4, target_modules="all")
    assert all(w.dtype == "float32" and "lora_kernel" in w.path for w in model.trainable_weights)
    quantized = {w.path: w.numpy() for w in model.weights if w.dtype == "int8"}
    assert quantized
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    history = model.fit({"input_ids": x}, batch_size=4, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] - 0.5
    for w in model.weights:
        if w.path in quantized:
            np.testing.assert_array_equal(w.numpy(), quantized[w.path])
    with pytest.raises(ValueError, match="quantized"):
        model.save_pretrained("/nonexistent", progress=False)


def test_a_bfloat16_base_trains_float32_adapters():
    model = fresh(dtype="bfloat16")
    model.enable_lora(4, target_modules="all")
    assert {w.dtype for w in model.trainable_weights} == {"float32"}
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))  # allowed: no bfloat16 weight trains
    history = model.fit({"input_ids": ids()}, batch_size=4, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] - 0.5
