"""`from_pretrained(path, quantize="int8")` against its reference, Keras' own `quantize("int8")`
after a float load: the same layers, variables and logits, on the tiny fixtures."""

import numpy as np
import pytest

from conftest import fixture_path
from tf_mistral import MistralConfig, TFMistralForCausalLM, TFMistralForSequenceClassification, checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:Layer .* does not have a `quantize` method")


def loaded(name="tiny_window", model_class=TFMistralForCausalLM, **kwargs):
    return model_class.from_pretrained(fixture_path(name), progress=False, **kwargs)


def quantized_after_loading(name="tiny_window", model_class=TFMistralForCausalLM, **kwargs):
    model = loaded(name, model_class, **kwargs)
    model.quantize("int8")
    return model


def variables(model):
    """`{path below the model: (dtype, numpy value)}` of every variable."""
    return {v.path.split("/", 1)[1]: (v.dtype, v.numpy()) for v in model.weights}


def assert_same_variables(model, reference):
    ours, theirs = variables(model), variables(reference)
    assert sorted(ours) == sorted(theirs)
    for path, (dtype, value) in theirs.items():
        assert ours[path][0] == dtype, path
        np.testing.assert_array_equal(ours[path][1], value, err_msg=path)


def layer_configs(model):
    """`{path below the model: get_config()}` of every layer."""
    return {layer.path.split("/", 1)[1]: layer.get_config() for layer in model._flatten_layers() if layer is not model}


IDS = np.array([[1, 17, 403, 9, 250, 77, 3, 999, 42, 5, 8, 600]], np.int32)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_on_load_holds_the_variables_quantize_gives(dtype):
    assert_same_variables(loaded(dtype=dtype, quantize="int8"), quantized_after_loading(dtype=dtype))


def test_int8_on_load_gives_each_layer_the_config_and_policy_quantize_gives():
    model, reference = loaded(dtype="bfloat16", quantize="int8"), quantized_after_loading(dtype="bfloat16")
    assert layer_configs(model) == layer_configs(reference)
    assert model.lm_head.dtype_policy.name == "int8_from_bfloat16"
    assert model.get_input_embeddings().quantization_mode == "int8"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_on_load_logits_equal_quantize_after_loading(dtype):
    model, reference = loaded(dtype=dtype, quantize="int8"), quantized_after_loading(dtype=dtype)
    np.testing.assert_array_equal(
        np.asarray(model(IDS).logits, np.float32), np.asarray(reference(IDS).logits, np.float32)
    )


def test_int8_on_load_tracks_hf_float_logits(reference):
    """Keras int8 (weights and activations) against HF transformers' float32 logits, with the
    bounds the LiteRT int8 file meets (test_tflite_export.py)."""
    logits = np.asarray(loaded(quantize="int8")(reference("tiny_window")["input_ids"]).logits, np.float32)
    expected = reference("tiny_window")["logits"]
    assert np.corrcoef(logits.ravel(), expected.ravel())[0, 1] > 0.99
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() > 0.9


def test_tensors_quantized_block_by_block_equal_whole_tensors_quantized(monkeypatch):
    monkeypatch.setattr(checkpoint.loading, "_BLOCK_BYTES", 1000)  # a few rows per block, the last one overlapping
    assert_same_variables(loaded(quantize="int8"), quantized_after_loading())


def test_a_classifier_quantizes_its_head_on_load_as_quantize_does():
    model_class = TFMistralForSequenceClassification
    assert_same_variables(
        loaded("tiny_seqcls", model_class, quantize="int8"), quantized_after_loading("tiny_seqcls", model_class)
    )


def test_a_head_missing_from_the_checkpoint_is_a_quantized_random_draw():
    with pytest.warns(UserWarning, match="newly initialised"):
        model = loaded(model_class=TFMistralForSequenceClassification, num_labels=3, quantize="int8")
    assert model.score.quantization_mode == "int8"
    assert np.abs(model.score._kernel.numpy()).max() == 127  # Keras' scale maps each column's largest to 127
    assert not np.allclose(model.score.kernel_scale.numpy(), 1.0)


def test_tied_int8_logits_read_the_dequantized_embedding_matrix(tmp_path):
    config = MistralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    TFMistralForCausalLM.from_config(config).save_pretrained(tmp_path, progress=False)
    ids = IDS % 50
    float_logits = np.asarray(TFMistralForCausalLM.from_pretrained(tmp_path, progress=False)(ids).logits)
    logits = np.asarray(TFMistralForCausalLM.from_pretrained(tmp_path, quantize="int8", progress=False)(ids).logits)
    np.testing.assert_allclose(logits, float_logits, atol=0.05 * np.abs(float_logits).max())


def test_an_int8_loaded_model_takes_lora_adapters():
    model = loaded(quantize="int8")
    model.enable_lora(2)
    adapted = [layer for layer in model._flatten_layers() if getattr(layer, "lora_enabled", False)]
    assert adapted and all(layer._kernel.dtype == "int8" for layer in adapted)
    np.testing.assert_array_equal(np.asarray(model(IDS).logits), np.asarray(loaded(quantize="int8")(IDS).logits))


@pytest.mark.parametrize("quantize, message", [("int4", "model.quantize"), ("float8", "model.quantize")])
def test_modes_loading_cannot_make_are_refused_pointing_to_quantize(quantize, message):
    with pytest.raises(ValueError, match=message):
        loaded(quantize=quantize)


def test_int8_with_float16_compute_is_refused_as_keras_refuses_it():
    with pytest.raises(ValueError, match="float16"):
        loaded(dtype="float16", quantize="int8")
