"""MistralConfig: both config.json forms in and out, presets, validation."""

import dataclasses
import json

import pytest

from conftest import fixture_path
from tf_mistral import PRESETS, MistralConfig

# mistralai/Mistral-7B-v0.1 config.json as published on the hub (hub form, no head_dim).
HUB_V01 = {
    "architectures": ["MistralForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.34.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}
# mistralai/Mistral-7B-Instruct-v0.2 and v0.3 differ from it in these fields only.
HUB_INSTRUCT_V02 = dict(HUB_V01, rope_theta=1000000.0, sliding_window=None, transformers_version="4.36.0")
HUB_V03 = dict(HUB_INSTRUCT_V02, vocab_size=32768, attention_dropout=0.0)

TINY = dict(
    vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2,
)


def v5_form(hub):
    """The same config.json as transformers v5 writes it."""
    data = {k: v for k, v in hub.items() if k not in ("rope_theta", "torch_dtype")}
    data["rope_parameters"] = {"rope_theta": hub["rope_theta"], "rope_type": "default"}
    data["dtype"] = hub["torch_dtype"]
    return data


def test_reads_hub_form():
    config = MistralConfig.from_dict(HUB_V01)
    assert config.rope_theta == 10000.0
    assert config.sliding_window == 4096
    assert config.torch_dtype == "bfloat16"
    assert config.head_dim == 128


def test_reads_v5_form():
    config = MistralConfig.from_dict(v5_form(HUB_INSTRUCT_V02))
    assert config.rope_theta == 1000000.0
    assert config.sliding_window is None
    assert config.torch_dtype == "bfloat16"


def test_hub_and_v5_forms_give_the_same_config():
    assert MistralConfig.from_dict(HUB_V03) == MistralConfig.from_dict(v5_form(HUB_V03))


def test_reads_fixture_written_by_transformers_v5():
    config = MistralConfig.from_json_file(fixture_path("tiny_window"))
    assert (config.head_dim, config.sliding_window, config.rope_theta) == (32, 16, 10000.0)
    assert config.torch_dtype == "float32"


@pytest.mark.parametrize("form", ["hub", "v5"])
def test_round_trips_through_either_form(form, tmp_path):
    config = MistralConfig(**TINY, head_dim=32, sliding_window=None, rope_theta=1e6, pad_token_id=0)
    config.save(tmp_path, form=form)
    assert MistralConfig.from_json_file(tmp_path) == config


def test_hub_form_writes_rope_theta_and_torch_dtype():
    data = MistralConfig.from_dict(HUB_V01).to_dict(form="hub")
    assert data["rope_theta"] == 10000.0 and data["torch_dtype"] == "bfloat16"
    assert "rope_parameters" not in data and "dtype" not in data
    assert data["model_type"] == "mistral" and data["architectures"] == ["MistralForCausalLM"]


def test_v5_form_writes_rope_parameters_and_dtype():
    data = MistralConfig.from_dict(HUB_V01).to_dict(form="v5")
    assert data["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert data["dtype"] == "bfloat16"
    assert "rope_theta" not in data and "torch_dtype" not in data


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="form"):
        MistralConfig(**TINY).to_dict(form="v4")


@pytest.mark.parametrize(
    "preset, hub",
    [("mistral_7b_v0.1", HUB_V01), ("mistral_7b_instruct_v0.2", HUB_INSTRUCT_V02), ("mistral_7b_v0.3", HUB_V03)],
)
def test_preset_equals_the_published_config(preset, hub):
    assert MistralConfig.from_preset(preset) == MistralConfig.from_dict(hub)


def test_preset_v01_carries_checkpoint_values_not_class_defaults():
    config = MistralConfig.from_preset("mistral_7b_v0.1")
    assert config.rope_theta == 1e4
    assert config.sliding_window == 4096
    assert config.rms_norm_eps == 1e-5
    assert config.max_position_embeddings == 32768


def test_preset_instruct_v02_has_no_window_and_rope_1e6():
    config = MistralConfig.from_preset("mistral_7b_instruct_v0.2")
    assert config.rope_theta == 1e6
    assert config.sliding_window is None


def test_preset_v03_has_the_larger_vocabulary():
    assert MistralConfig.from_preset("mistral_7b_v0.3").vocab_size == 32768
    assert MistralConfig.from_preset("mistral_7b_instruct_v0.3").vocab_size == 32768


def test_every_preset_is_a_7b_model():
    for name in PRESETS:
        parameters = MistralConfig.from_preset(name).num_parameters()
        assert 7.2e9 < parameters < 7.3e9, (name, parameters)


def test_preset_overrides_apply():
    assert MistralConfig.from_preset("mistral_7b_v0.1", num_hidden_layers=2).num_hidden_layers == 2


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="mistral_7b_v0.1"):
        MistralConfig.from_preset("mistral_8x7b")


def test_head_dim_defaults_to_hidden_over_heads():
    assert MistralConfig(**TINY).head_dim == 16


def test_head_dim_null_in_config_json_defaults_too():
    assert MistralConfig.from_dict(dict(HUB_V01, head_dim=None)).head_dim == 128


def test_explicit_head_dim_may_differ_from_hidden_over_heads():
    assert MistralConfig(**TINY, head_dim=32).head_dim == 32


def test_heads_not_divisible_by_kv_heads_is_refused():
    with pytest.raises(ValueError, match=r"num_attention_heads \(4\).*num_key_value_heads \(3\)"):
        MistralConfig(**dict(TINY, num_key_value_heads=3))


def test_odd_head_dim_is_refused():
    with pytest.raises(ValueError, match="head_dim.*even.*15"):
        MistralConfig(**TINY, head_dim=15)


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"])
@pytest.mark.parametrize("value", [0, -4])
def test_non_positive_size_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got {value}"):
        MistralConfig(**dict(TINY, **{field: value}))


def test_non_integer_size_is_refused():
    with pytest.raises(ValueError, match="hidden_size.*64.0"):
        MistralConfig(**dict(TINY, hidden_size=64.0))


def test_zero_sliding_window_is_refused():
    with pytest.raises(ValueError, match="sliding_window"):
        MistralConfig(**TINY, sliding_window=0)


def test_non_positive_rms_norm_eps_is_refused():
    with pytest.raises(ValueError, match="rms_norm_eps"):
        MistralConfig(**TINY, rms_norm_eps=0.0)


def test_unknown_keys_are_kept_and_written_back():
    config = MistralConfig.from_dict(dict(HUB_V01, num_experts=8, my_note="kept"))
    assert config.extra == {"num_experts": 8, "my_note": "kept"}
    assert config.to_dict()["num_experts"] == 8
    assert MistralConfig.from_dict(config.to_dict()) == config


def test_bookkeeping_fields_of_transformers_are_ignored():
    data = dict(HUB_V01, _name_or_path="mistralai/Mistral-7B-v0.1", output_attentions=False)
    assert MistralConfig.from_dict(data) == MistralConfig.from_dict(HUB_V01)


def test_rope_scaling_is_refused():
    with pytest.raises(ValueError, match="rope scaling"):
        MistralConfig.from_dict(dict(HUB_V01, rope_scaling={"type": "linear", "factor": 2.0}))


def test_non_default_rope_type_is_refused():
    data = v5_form(HUB_V01)
    data["rope_parameters"] = {"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0}
    with pytest.raises(ValueError, match="yarn"):
        MistralConfig.from_dict(data)


def test_other_model_type_is_refused():
    with pytest.raises(ValueError, match="llama"):
        MistralConfig.from_dict(dict(HUB_V01, model_type="llama"))


def test_tied_embeddings_count_one_matrix():
    tied, untied = MistralConfig(**TINY, tie_word_embeddings=True), MistralConfig(**TINY)
    assert untied.num_parameters() - tied.num_parameters() == 1000 * 64


def test_labels_follow_id2label():
    config = MistralConfig(**TINY, id2label={"0": "negative", "1": "neutral", "2": "positive"})
    assert config.num_labels == 3
    assert config.label2id == {"negative": 0, "neutral": 1, "positive": 2}


def test_eos_token_ids_accepts_int_or_list():
    assert MistralConfig(**TINY, eos_token_id=2).eos_token_ids == [2]
    assert MistralConfig(**TINY, eos_token_id=[2, 32000]).eos_token_ids == [2, 32000]


def test_missing_config_json_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MistralConfig.from_json_file(tmp_path)


def test_invalid_json_says_which_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        MistralConfig.from_json_file(tmp_path)


# ----------------------------------------------------------------------------------------------
# Against transformers' own MistralConfig


@pytest.mark.torch
@pytest.mark.parametrize("hub", [HUB_V01, HUB_INSTRUCT_V02, HUB_V03])
def test_reads_what_transformers_writes(hub):
    transformers = pytest.importorskip("transformers")
    theirs = MistralConfig.from_dict(transformers.MistralConfig.from_dict(hub).to_dict())
    ours = MistralConfig.from_dict(hub)
    assert set(theirs.extra) >= set(ours.extra)  # transformers adds keys of its own
    assert dataclasses.replace(theirs, extra={}) == dataclasses.replace(ours, extra={})


@pytest.mark.torch
@pytest.mark.parametrize("form", ["hub", "v5"])
def test_transformers_reads_what_we_write(form, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = MistralConfig(**TINY, head_dim=32, sliding_window=None, rope_theta=1e6, torch_dtype="bfloat16")
    ours.save(tmp_path, form=form)
    theirs = transformers.MistralConfig.from_pretrained(tmp_path)
    for field in ("vocab_size", "hidden_size", "num_key_value_heads", "head_dim", "sliding_window",
                  "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(theirs, field) == getattr(ours, field), field
    assert theirs.rope_parameters["rope_theta"] == 1e6
    assert str(theirs.dtype) == "torch.bfloat16"
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]


def test_setting_num_labels_resizes_id2label_as_hf():
    config = MistralConfig(**TINY, id2label={0: "negative", 1: "positive"})
    config.num_labels = 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}


def test_setting_the_same_num_labels_keeps_the_names():
    config = MistralConfig(**TINY, id2label={0: "negative", 1: "positive"})
    config.num_labels = 2
    assert config.id2label == {0: "negative", 1: "positive"}


@pytest.mark.parametrize("hidden_act", ["silu", "gelu", "gelu_new", "relu"])
def test_hidden_acts_that_hf_accepts_are_read(hidden_act):
    assert MistralConfig.from_dict(dict(HUB_V01, hidden_act=hidden_act)).hidden_act == hidden_act


def test_unsupported_hidden_act_is_named():
    with pytest.raises(ValueError, match="hidden_act 'softsign'.*gelu_new"):
        MistralConfig(**TINY, hidden_act="softsign")


def test_to_json_string_is_what_save_pretrained_writes(tmp_path):
    config = MistralConfig.from_dict(dict(HUB_V01, my_note="kept"))
    config.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == config.to_json_string()
    assert MistralConfig.from_pretrained(tmp_path) == config


def test_to_json_file_writes_a_file_that_from_pretrained_reads(tmp_path):
    config = MistralConfig(**TINY, problem_type="regression", output_hidden_states=True)
    config.to_json_file(tmp_path / "mine.json")
    assert MistralConfig.from_pretrained(tmp_path / "mine.json") == config
