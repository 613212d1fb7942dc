"""HF safetensors checkpoints in and out: round trips, sharding, dtypes, and the errors a broken
checkpoint raises (each built in tmp_path from the fixtures)."""

import json
import os
import shutil

import keras
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
import tensorflow as tf

from conftest import fixture_path
from tf_mistral import (
    TFMistralForCausalLM,
    TFMistralForSequenceClassification,
    TFMistralForTokenClassification,
    TFMistralModel,
    checkpoint,
)
from tf_mistral.arguments import parse_size
from tf_mistral.safetensors_io import INDEX_FILE, SINGLE_FILE, CheckpointError

K_PROJ = "model.layers.0.self_attn.k_proj.weight"


def fixture_tensors(name="tiny_window"):
    return load_file(os.path.join(fixture_path(name), SINGLE_FILE))


def checkpoint_with(tmp_path, tensors, config_changes=None, name="tiny_window"):
    """A copy of fixture `name` whose single safetensors file holds `tensors`."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    config = json.loads(open(os.path.join(fixture_path(name), "config.json")).read())
    config.update(config_changes or {})
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / SINGLE_FILE), metadata={"format": "pt"})
    return folder


def saved_tensors(folder):
    """Every tensor of a saved folder (single file or shards), as numpy."""
    tensors = {}
    for file_name in sorted(os.listdir(folder)):
        if file_name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, file_name)))
    return tensors


def load(folder, cls=TFMistralForCausalLM, **kwargs):
    return cls.from_pretrained(str(folder), progress=False, **kwargs)


def assert_same_weights(a, b):
    """Same variables (paths below the model's own name) with bit-identical values."""
    assert [v.path.split("/", 1)[1] for v in a.weights] == [v.path.split("/", 1)[1] for v in b.weights]
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y), err_msg=x.path)


# ----------------------------------------------------------------------------------------------
# Loading


def test_sharded_checkpoint_loads_the_same_weights_as_the_single_file(causal_lm):
    assert_same_weights(causal_lm("tiny_sharded"), causal_lm("tiny_window"))


def test_loaded_kernels_are_the_transposed_torch_weights(causal_lm):
    model, tensors = causal_lm("tiny_window"), fixture_tensors()
    layer = model.model.decoder_layers[0]
    np.testing.assert_array_equal(layer.self_attn.k_proj.kernel.numpy(), tensors[K_PROJ].T)
    np.testing.assert_array_equal(model.lm_head.kernel.numpy(), tensors["lm_head.weight"].T)


def test_dtype_defaults_to_the_checkpoint_dtype(causal_lm):
    assert causal_lm("tiny_window").dtype_policy.name == "float32"


def test_bare_model_loads_from_a_causal_lm_checkpoint(reference):
    model = load(fixture_path("tiny_window"), TFMistralModel)
    hidden = model(reference("tiny_window")["input_ids"]).last_hidden_state
    np.testing.assert_allclose(hidden, reference("tiny_window")["hidden_states_last"], atol=1e-4)


def test_bare_model_loads_from_a_bare_checkpoint_without_model_prefix(tmp_path, reference):
    tensors = {k[len("model."):]: v for k, v in fixture_tensors().items() if k.startswith("model.")}
    model = load(checkpoint_with(tmp_path, tensors), TFMistralModel)
    hidden = model(reference("tiny_window")["input_ids"]).last_hidden_state
    np.testing.assert_allclose(hidden, reference("tiny_window")["hidden_states_last"], atol=1e-4)


def test_causal_lm_loads_a_bare_checkpoint_and_warns_lm_head_is_new(tmp_path, causal_lm):
    tensors = {k[len("model."):]: v for k, v in fixture_tensors().items() if k.startswith("model.")}
    with pytest.warns(UserWarning, match=r"lm_head\.weight.*newly initialised"):
        model = load(checkpoint_with(tmp_path, tensors))
    assert_same_weights(model.model, causal_lm("tiny_window").model)


@pytest.mark.parametrize("name, message", [
    ("tiny_seqcls", "is a sequence-classification checkpoint .*load it with TFMistralForSequenceClassification"),
    ("tiny_tokcls", "is a token-classification checkpoint .*load it with TFMistralForTokenClassification"),
])
def test_causal_lm_refuses_a_classification_checkpoint_naming_the_class_to_use(name, message):
    with pytest.raises(CheckpointError, match=message):
        load(fixture_path(name))


def test_sequence_classifier_from_causal_lm_checkpoint_warns_score_is_new(causal_lm):
    with pytest.warns(UserWarning, match=r"score\.weight.*newly initialised"):
        model = load(fixture_path("tiny_window"), TFMistralForSequenceClassification, num_labels=3)
    assert_same_weights(model.model, causal_lm("tiny_window").model)


def test_head_missing_from_checkpoint_gets_a_random_initialisation():
    with pytest.warns(UserWarning, match="newly initialised"):
        model = load(fixture_path("tiny_window"), TFMistralForSequenceClassification, num_labels=3)
    assert np.abs(model.score.kernel.numpy()).min() > 0


def test_loading_leaves_the_layers_initializers_as_they_were(causal_lm):
    dense = causal_lm("tiny_window").lm_head
    assert isinstance(dense.kernel_initializer, keras.initializers.GlorotUniform)


def test_tensors_larger_than_a_read_block_load_identically(causal_lm, monkeypatch):
    monkeypatch.setattr(checkpoint.loading, "_BLOCK_BYTES", 1000)  # a few rows per block, many blocks per tensor
    assert_same_weights(load(fixture_path("tiny_window")), causal_lm("tiny_window"))


def test_loaded_variables_are_read_without_a_copy():
    """Sparse writes (`ResourceStridedSliceAssign`) would put a variable in copy-on-read mode:
    every later read, in a graph too, then copies the whole weight. Two reads of a dense
    variable share its buffer."""

    def buffer(variable):
        return tf.convert_to_tensor(variable).numpy().__array_interface__["data"][0]

    model = load(fixture_path("tiny_window"))
    copied = [variable.path for variable in model.weights if buffer(variable) != buffer(variable)]
    assert not copied


def test_token_classifier_from_causal_lm_checkpoint_warns_about_weight_and_bias():
    with pytest.warns(UserWarning, match=r"score\.weight.*score\.bias.*newly initialised"):
        load(fixture_path("tiny_window"), TFMistralForTokenClassification)


def test_config_overrides_apply_before_loading():
    model = load(fixture_path("tiny_seqcls"), TFMistralForSequenceClassification, pad_token_id=5)
    assert model.config.pad_token_id == 5


# ----------------------------------------------------------------------------------------------
# Saving


def test_save_then_load_gives_identical_weights(causal_lm, tmp_path):
    model = causal_lm("tiny_window")
    model.save_pretrained(tmp_path, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", SINGLE_FILE]
    assert_same_weights(load(tmp_path), model)


def test_saved_tensors_equal_the_hf_checkpoint_tensors(causal_lm, tmp_path):
    causal_lm("tiny_window").save_pretrained(tmp_path, progress=False)
    ours, theirs = saved_tensors(tmp_path), fixture_tensors()
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_saved_config_reads_back_equal(causal_lm, tmp_path):
    model = causal_lm("tiny_window")
    model.save_pretrained(tmp_path, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"]
    assert load(tmp_path).config == model.config


def test_save_above_max_shard_size_writes_shards_and_a_correct_index(causal_lm, tmp_path):
    model = causal_lm("tiny_window")
    model.save_pretrained(tmp_path, max_shard_size="100KB", progress=False)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    shards = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert len(shards) > 1 and SINGLE_FILE not in shards
    assert sorted(set(index["weight_map"].values())) == shards
    sizes = {}
    for shard in shards:
        tensors = load_file(str(tmp_path / shard))
        assert all(index["weight_map"][name] == shard for name in tensors)
        sizes[shard] = (len(tensors), sum(t.nbytes for t in tensors.values()))
    assert sorted(index["weight_map"]) == sorted(fixture_tensors())
    assert index["metadata"]["total_size"] == sum(nbytes for _, nbytes in sizes.values())
    # A shard exceeds the limit only when one tensor alone does (the 256 KB embeddings).
    assert all(count == 1 or nbytes <= parse_size("100KB") for count, nbytes in sizes.values())
    assert_same_weights(load(tmp_path), model)


def test_resaving_unsharded_removes_stale_shards(causal_lm, tmp_path):
    model = causal_lm("tiny_window")
    model.save_pretrained(tmp_path, max_shard_size="100KB", progress=False)
    model.save_pretrained(tmp_path, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", SINGLE_FILE]


def test_bfloat16_save_writes_bf16_tensors_and_torch_dtype(causal_lm, tmp_path):
    causal_lm("tiny_window").save_pretrained(tmp_path, dtype="bfloat16", progress=False)
    with open(tmp_path / SINGLE_FILE, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    header.pop("__metadata__")
    assert {entry["dtype"] for entry in header.values()} == {"BF16"}
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_bfloat16_checkpoint_loads_as_bfloat16_by_default(causal_lm, tmp_path):
    causal_lm("tiny_window").save_pretrained(tmp_path, dtype="bfloat16", progress=False)
    model = load(tmp_path)
    assert model.dtype_policy.name == "bfloat16"
    assert {v.dtype for v in model.weights} == {"bfloat16"}


def test_bfloat16_checkpoint_upcasts_exactly_to_float32(causal_lm, tmp_path):
    original = causal_lm("tiny_window")
    original.save_pretrained(tmp_path, dtype="bfloat16", progress=False)
    model = load(tmp_path, dtype="float32")
    expected = original.lm_head.kernel.numpy().astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(model.lm_head.kernel.numpy(), expected)


def test_classifier_saves_with_its_architecture_and_labels(reference, tmp_path):
    model = load(fixture_path("tiny_seqcls"), TFMistralForSequenceClassification)
    model.save_pretrained(tmp_path, progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["MistralForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert_same_weights(load(tmp_path, TFMistralForSequenceClassification), model)


@pytest.mark.filterwarnings("ignore:Layer .* does not have a `quantize` method")
def test_quantized_model_is_refused_by_save_pretrained(tmp_path):
    model = load(fixture_path("tiny_window"))
    model.quantize("int8")
    with pytest.raises(ValueError, match="quantized"):
        model.save_pretrained(tmp_path, progress=False)


@pytest.mark.parametrize("dtype", ["int8", "int32", "bool"])
def test_save_pretrained_refuses_a_dtype_a_checkpoint_cannot_hold_before_touching_the_folder(
    causal_lm, tmp_path, dtype
):
    model = causal_lm("tiny_window")
    model.save_pretrained(tmp_path, progress=False)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with pytest.raises(ValueError, match=rf"not '{dtype}'.*tflite"):
        model.save_pretrained(tmp_path, dtype=dtype, progress=False)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_save_pretrained_with_a_bad_shard_size_creates_no_folder(causal_lm, tmp_path):
    with pytest.raises(ValueError, match="lots"):
        causal_lm("tiny_window").save_pretrained(tmp_path / "new", max_shard_size="lots", progress=False)
    assert not (tmp_path / "new").exists()


def test_saving_sharded_over_a_sharded_checkpoint_loads_the_new_weights(causal_lm, tmp_path):
    causal_lm("tiny_window").save_pretrained(tmp_path, max_shard_size="100KB", progress=False)
    model = causal_lm("tiny_window", "bfloat16")
    model.save_pretrained(tmp_path, max_shard_size="100KB", progress=False)
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name or ".link-" in name]
    assert_same_weights(load(tmp_path), model)


@pytest.mark.parametrize("size, expected", [("5GB", 5 * 10**9), ("100KB", 100_000), ("2GiB", 2 * 2**30), (123, 123)])
def test_parse_size(size, expected):
    assert parse_size(size) == expected


def test_parse_size_refuses_nonsense():
    with pytest.raises(ValueError, match="5 gigs"):
        parse_size("5 gigs")


# ----------------------------------------------------------------------------------------------
# Progress bars


def test_progress_bar_shows_on_load_and_save(tmp_path, capfd):
    model = TFMistralForCausalLM.from_pretrained(fixture_path("tiny_window"), progress=True)
    assert "loading weights" in capfd.readouterr().err
    model.save_pretrained(tmp_path, progress=True)
    assert "saving weights" in capfd.readouterr().err


def test_no_progress_bar_when_progress_is_false(causal_lm, tmp_path, capfd):
    capfd.readouterr()
    load(fixture_path("tiny_window")).save_pretrained(tmp_path, progress=False)
    err = capfd.readouterr().err
    assert "loading weights" not in err and "saving weights" not in err


# ----------------------------------------------------------------------------------------------
# Broken checkpoints: each raises CheckpointError naming what is wrong; nothing is returned


def test_missing_tensor_is_named(tmp_path):
    tensors = fixture_tensors()
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match=r"lacks 1 tensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load(checkpoint_with(tmp_path, tensors))


def test_unexpected_tensor_is_named(tmp_path):
    tensors = fixture_tensors()
    tensors["model.layers.2.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointError, match=r"does not know.*model\.layers\.2\.mlp\.up_proj\.weight"):
        load(checkpoint_with(tmp_path, tensors))


def test_k_proj_with_other_kv_heads_names_the_tensor_and_kv_heads(tmp_path):
    tensors = fixture_tensors()
    tensors[K_PROJ] = tensors[K_PROJ][:32]  # 1 kv head of head_dim 32 instead of 2
    with pytest.raises(CheckpointError, match=rf"{K_PROJ}.*\(32, 64\).*\(64, 64\).*1 kv heads.*config says 2"):
        load(checkpoint_with(tmp_path, tensors))


def test_config_vocab_disagreeing_with_weights_names_both_sizes(tmp_path):
    folder = checkpoint_with(tmp_path, fixture_tensors(), config_changes={"vocab_size": 1200})
    with pytest.raises(CheckpointError, match=r"embed_tokens.*vocabulary is 1000 but config says 1200"):
        load(folder)


def test_integer_tensor_is_refused(tmp_path):
    tensors = fixture_tensors()
    tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int32)
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight.*int32"):
        load(checkpoint_with(tmp_path, tensors))


@pytest.mark.parametrize("name, dtype, value", [
    ("model.layers.1.mlp.up_proj.weight", np.float32, np.nan),
    (K_PROJ, ml_dtypes.bfloat16, np.inf),
    ("lm_head.weight", np.float16, -np.inf),
    ("model.norm.weight", np.float32, np.nan),  # 1-D: read whole, not by blocks
    ("model.layers.0.input_layernorm.weight", ml_dtypes.bfloat16, np.nan),
])
def test_a_tensor_holding_nan_or_infinity_is_refused_by_name(tmp_path, name, dtype, value):
    tensors = fixture_tensors()
    tensors[name] = tensors[name].astype(dtype)
    tensors[name].reshape(-1)[-1] = value
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' holds NaN or infinite values"):
        load(checkpoint_with(tmp_path, tensors))


def test_nan_in_any_block_of_a_tensor_read_in_blocks_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.loading, "_BLOCK_BYTES", 1000)  # a few rows per block
    tensors = fixture_tensors()
    tensors[K_PROJ][37, 5] = np.nan  # inside a middle block of the 64 rows
    with pytest.raises(CheckpointError, match=rf"tensor '{K_PROJ}' holds NaN"):
        load(checkpoint_with(tmp_path, tensors))


def test_largest_finite_16_bit_values_load(tmp_path):
    tensors = fixture_tensors()
    for name, dtype in ((K_PROJ, ml_dtypes.bfloat16), ("model.norm.weight", np.float16)):
        tensors[name] = tensors[name].astype(dtype)
        tensors[name].reshape(-1)[:2] = [np.finfo(dtype).max, np.finfo(dtype).min]
    model = load(checkpoint_with(tmp_path, tensors))
    assert model.model.norm.weight.numpy()[0] == np.finfo(np.float16).max


def test_truncated_file_is_refused_with_advice(tmp_path):
    folder = checkpoint_with(tmp_path, fixture_tensors())
    path = folder / SINGLE_FILE
    os.truncate(path, os.path.getsize(path) - 1000)
    with pytest.raises(CheckpointError, match="is truncated.*copy it again"):
        load(folder)


def test_file_shorter_than_its_header_is_refused(tmp_path):
    folder = checkpoint_with(tmp_path, fixture_tensors())
    os.truncate(folder / SINGLE_FILE, 100)
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load(folder)


def test_corrupt_header_is_refused(tmp_path):
    folder = checkpoint_with(tmp_path, fixture_tensors())
    with open(folder / SINGLE_FILE, "r+b") as f:
        f.seek(8)
        f.write(b"\xff{{garbage")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load(folder)


def test_index_naming_a_missing_shard_is_refused(tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(fixture_path("tiny_sharded"), folder)
    os.remove(folder / "model-00003-of-00006.safetensors")
    with pytest.raises(CheckpointError, match="lists model-00003-of-00006.safetensors but it is not in"):
        load(folder)


def test_index_placing_a_tensor_in_the_wrong_shard_is_refused(tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(fixture_path("tiny_sharded"), folder)
    index = json.loads((folder / INDEX_FILE).read_text())
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00006.safetensors"
    (folder / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"'lm_head\.weight' in model-00002-of-00006"):
        load(folder)


def test_pickle_only_folder_is_refused_with_conversion_advice(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(os.path.join(fixture_path("tiny_window"), "config.json"), folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02not really a pickle")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*safe_serialization=True"):
        load(folder)


def test_folder_without_weights_says_what_it_looked_for(tmp_path):
    shutil.copy(os.path.join(fixture_path("tiny_window"), "config.json"), tmp_path)
    with pytest.raises(CheckpointError, match=f"no {SINGLE_FILE} or {INDEX_FILE}"):
        load(tmp_path)


def test_missing_folder_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path / "nowhere")


def test_failed_load_returns_nothing(tmp_path):
    tensors = fixture_tensors()
    del tensors["lm_head.weight"], tensors["model.norm.weight"]
    result = None
    with pytest.raises(CheckpointError):
        result = load(checkpoint_with(tmp_path, tensors))
    assert result is None


# ----------------------------------------------------------------------------------------------
# HF transformers reads what we write


@pytest.mark.torch
@pytest.mark.parametrize("max_shard_size", ["5GB", "100KB"])
def test_transformers_loads_our_checkpoint_with_the_same_logits(max_shard_size, causal_lm, reference, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ours, ids = causal_lm("tiny_window"), reference("tiny_window")["input_ids"]
    ours.save_pretrained(tmp_path, max_shard_size=max_shard_size, progress=False)
    theirs = transformers.MistralForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = theirs(torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(logits, reference("tiny_window")["logits"], atol=1e-5)
    np.testing.assert_allclose(logits, ours(ids).logits, atol=1e-4)


@pytest.mark.torch
def test_transformers_loads_our_token_classifier_with_its_bias(reference, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ref = reference("tiny_tokcls")
    load(fixture_path("tiny_tokcls"), TFMistralForTokenClassification).save_pretrained(tmp_path, progress=False)
    theirs = transformers.MistralForTokenClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = theirs(torch.from_numpy(ref["input_ids"]).long(),
                        attention_mask=torch.from_numpy(ref["attention_mask"]).long()).logits.numpy()
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-5)


@pytest.mark.torch
def test_transformers_reads_our_bfloat16_checkpoint_as_bfloat16(causal_lm, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ours = causal_lm("tiny_window")
    ours.save_pretrained(tmp_path, dtype="bfloat16", progress=False)
    theirs = transformers.MistralForCausalLM.from_pretrained(tmp_path)
    assert theirs.dtype == torch.bfloat16
    expected = ours.lm_head.kernel.numpy().T.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(theirs.lm_head.weight.float().detach().numpy(), expected)
