"""HF's model methods and loading / saving habits: embeddings, resize_token_embeddings, dummy inputs,
input_signature, prepare_tf_dataset, from_pretrained(num_labels=...), from_config, KerasHub's from_preset,
generation_config.json, save_pretrained(saved_model=True)."""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from conftest import fixture_path
from tf_mistral import MistralConfig, TFMistralForCausalLM, TFMistralForSequenceClassification, TFMistralModel
from tf_mistral.safetensors_io import CheckpointError

SMALL = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, sliding_window=4)
IDS = np.array([[5, 6, 7, 8], [9, 10, 11, 12]], np.int32)


def small(model_class=TFMistralForCausalLM, **overrides):
    return model_class.from_config(MistralConfig(**dict(SMALL, **overrides)))


def load(model_class, name, **kwargs):
    return model_class.from_pretrained(fixture_path(name), progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------
# Embeddings


def test_input_and_output_embeddings_are_the_embedding_and_lm_head():
    model = small()
    assert model.get_input_embeddings() is model.model.embed_tokens
    assert model.get_output_embeddings() is model.lm_head
    assert small(TFMistralForSequenceClassification).get_output_embeddings() is None


def test_set_input_embeddings_takes_a_layer_and_the_model_uses_it():
    model = small()
    new = keras.layers.Embedding(50, 16)
    new.build((None, None))
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new
    assert len(model.weights) == len(small().weights)
    by_embeds = model(inputs_embeds=new(IDS)).logits
    np.testing.assert_array_equal(model(IDS).logits, by_embeds)


@pytest.mark.parametrize("new_size", [60, 40])
def test_resize_token_embeddings_resizes_embeddings_and_lm_head(new_size):
    model = small()
    before_embeddings = model.get_input_embeddings().embeddings.numpy()
    model.resize_token_embeddings(new_size)
    kept = min(new_size, 50)
    assert model.config.vocab_size == new_size
    assert model.get_input_embeddings().embeddings.shape == (new_size, 16)
    assert model.lm_head.kernel.shape == (16, new_size)
    np.testing.assert_array_equal(model.get_input_embeddings().embeddings.numpy()[:kept], before_embeddings[:kept])
    assert model(IDS).logits.shape == (2, 4, new_size)
    assert len(model.weights) == len(small().weights)


def test_new_rows_start_as_the_mean_of_the_old_ones():
    model = small()
    mean = model.get_input_embeddings().embeddings.numpy().mean(axis=0)
    model.resize_token_embeddings(52)
    np.testing.assert_allclose(model.get_input_embeddings().embeddings.numpy()[50:], [mean, mean], atol=1e-7)


def test_resized_model_round_trips_through_save_pretrained(tmp_path):
    model = small()
    model.resize_token_embeddings(64)
    model.save_pretrained(tmp_path, progress=False)
    restored = TFMistralForCausalLM.from_pretrained(tmp_path, progress=False)
    assert restored.config.vocab_size == 64
    np.testing.assert_array_equal(restored(IDS).logits, model(IDS).logits)


def test_tied_logits_read_the_embedding_matrix():
    model = small(tie_word_embeddings=True)
    assert model.get_output_embeddings() is model.get_input_embeddings()
    hidden = model.model(IDS).last_hidden_state
    expected = np.asarray(hidden) @ model.get_input_embeddings().embeddings.numpy().T
    np.testing.assert_allclose(model(IDS).logits, expected, atol=1e-5)
    assert len(model.weights) == len(small().weights) - 1


def test_resizing_tied_embeddings_resizes_the_logits_and_round_trips(tmp_path):
    model = small(tie_word_embeddings=True)
    model.resize_token_embeddings(64)
    assert model(IDS).logits.shape == (2, 4, 64)
    model.save_pretrained(tmp_path, progress=False)
    restored = TFMistralForCausalLM.from_pretrained(tmp_path, progress=False)
    assert restored.config.tie_word_embeddings and restored.config.vocab_size == 64
    np.testing.assert_array_equal(restored(IDS).logits, model(IDS).logits)


# ----------------------------------------------------------------------------------------------
# HF's class attributes


def test_main_input_name_dummy_inputs_and_input_signature():
    model = small()
    assert model.main_input_name == "input_ids"
    assert model(model.dummy_inputs).logits.shape == (3, 5, 50)
    signature = model.input_signature
    assert sorted(signature) == ["attention_mask", "input_ids"]
    assert signature["input_ids"].shape.as_list() == [None, None] and signature["input_ids"].dtype == "int32"


def test_prepare_tf_dataset_pads_batches_and_separates_labels():
    model = small(pad_token_id=0)
    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7], "text": "dropped"}, {"input_ids": [8, 9], "labels": [8, 9]}]
    features, labels = next(iter(model.prepare_tf_dataset(rows[:1] + [dict(rows[1], text="x")], batch_size=2,
                                                          shuffle=False)))
    assert sorted(features) == ["attention_mask", "input_ids"]
    np.testing.assert_array_equal(features["input_ids"], [[5, 6, 7], [8, 9, 0]])
    np.testing.assert_array_equal(features["attention_mask"], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(labels, [[5, 6, 7], [8, 9, -100]])


def test_prepare_tf_dataset_feeds_fit():
    model = small(pad_token_id=0)
    model.compile(optimizer="adamw")
    data = {"input_ids": [[5, 6, 7, 8], [9, 10]], "labels": [[5, 6, 7, 8], [9, 10]]}
    history = model.fit(model.prepare_tf_dataset(data, batch_size=2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# ----------------------------------------------------------------------------------------------
# Loading


def test_num_labels_wins_over_config_json_with_ignore_mismatched_sizes():
    with pytest.warns(UserWarning, match=r"score\.weight.*\(3, 64\).*\(5, 64\).*newly initialised"):
        model = load(TFMistralForSequenceClassification, "tiny_seqcls", num_labels=5, ignore_mismatched_sizes=True)
    assert model.config.num_labels == 5 and len(model.config.id2label) == 5
    assert model.score.kernel.shape == (64, 5)
    assert np.abs(model.score.kernel.numpy()).min() > 0
    reference = load(TFMistralForSequenceClassification, "tiny_seqcls")
    np.testing.assert_array_equal(model.model.embed_tokens.embeddings, reference.model.embed_tokens.embeddings)


def test_num_labels_mismatch_without_ignore_names_the_tensor_and_the_fix():
    with pytest.raises(
        CheckpointError, match=r"score\.weight.*3 labels but num_labels is 5.*ignore_mismatched_sizes=True"
    ):
        load(TFMistralForSequenceClassification, "tiny_seqcls", num_labels=5)


def test_from_pt_and_from_tf_are_accepted_and_ignored():
    model = load(TFMistralModel, "tiny_window", from_pt=True, from_tf=False)
    assert model.config.vocab_size == 1000


@pytest.mark.parametrize("model_class", [TFMistralModel, TFMistralForCausalLM, TFMistralForSequenceClassification])
def test_from_config_takes_a_mistral_config(model_class):
    model = model_class.from_config(MistralConfig(**SMALL))
    assert model.built and model.config == MistralConfig(**SMALL)


# ----------------------------------------------------------------------------------------------
# KerasHub's from_preset, without downloads


def test_from_preset_of_a_folder_loads_its_weights_and_attaches_its_tokenizer(tmp_path, reference):
    for file in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(fixture_path("tiny_window"), file), tmp_path)
    shutil.copy(os.path.join(fixture_path("tiny_tokenizer"), "tokenizer.model"), tmp_path)
    model = TFMistralForCausalLM.from_preset(str(tmp_path), progress=False)
    ref = reference("tiny_window")
    np.testing.assert_allclose(model(ref["input_ids"]).logits, ref["logits"], atol=1e-4)
    assert model.preprocessor.tokenizer.vocab_size == 1000
    assert isinstance(model.generate("The cat", max_new_tokens=2, eos_token_id=[]), str)


def test_from_preset_of_a_classifier_folder_equals_from_pretrained(reference):
    model = TFMistralForSequenceClassification.from_preset(fixture_path("tiny_seqcls"), progress=False)
    ref = reference("tiny_seqcls")
    np.testing.assert_allclose(model(ref["input_ids_right"], attention_mask=ref["attention_mask_right"]).logits,
                               ref["logits_right"], atol=1e-4)


def test_from_preset_of_a_name_without_weights_is_a_random_model_of_that_shape():
    small_sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16)
    model = TFMistralForCausalLM.from_preset("mistral_7b_v0.3", load_weights=False, **small_sizes)
    assert model.config == MistralConfig.from_preset("mistral_7b_v0.3", **small_sizes)
    assert model.built and model(IDS).logits.shape == (2, 4, 32768)


@pytest.mark.parametrize("preset, message", [
    ("mistral_7b_v0.1", "preset 'mistral_7b_v0.1' is a shape without weights: tf_mistral downloads nothing"),
    ("hf://mistralai/Mistral-7B-v0.1", "is neither a local folder nor a preset name"),
])
def test_from_preset_that_would_download_says_what_to_pass_instead(preset, message):
    with pytest.raises(ValueError, match=message):
        TFMistralForCausalLM.from_preset(preset)


# ----------------------------------------------------------------------------------------------
# Saving


def test_save_pretrained_writes_the_generation_config_and_from_pretrained_reads_it(tmp_path):
    model = load(TFMistralForCausalLM, "tiny_window")
    with open(os.path.join(fixture_path("tiny_window"), "generation_config.json")) as f:
        hf_written = json.load(f)
    model.generation_config = dict(hf_written, eos_token_id=7)
    model.save_pretrained(tmp_path, progress=False)
    written = json.loads((tmp_path / "generation_config.json").read_text())
    assert written["eos_token_id"] == 7 and written["bos_token_id"] == 1 and written["_from_model_config"]
    assert dict(TFMistralForCausalLM.from_pretrained(tmp_path, progress=False).generation_config) == written


def test_classifiers_write_no_generation_config(tmp_path):
    small(TFMistralForSequenceClassification).save_pretrained(tmp_path, progress=False)
    assert not (tmp_path / "generation_config.json").exists()


def test_save_pretrained_with_saved_model_writes_a_forward_signature(tmp_path):
    import tensorflow as tf

    model = small()
    model.save_pretrained(tmp_path, progress=False, saved_model=True)
    serving = tf.saved_model.load(str(tmp_path / "saved_model" / "1")).signatures["serving_default"]
    logits = serving(input_ids=tf.constant(IDS), attention_mask=tf.ones_like(IDS))["logits"]
    np.testing.assert_allclose(logits, model(IDS).logits, atol=1e-6)
