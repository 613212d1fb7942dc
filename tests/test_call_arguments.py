"""The `call` arguments of HF's TF classes: labels -> loss, attentions, hidden states, past_key_values,
inputs_embeds, return_dict; numbers compared with HF PyTorch (tests/fixtures/*/call_reference.npz)."""

import numpy as np
import pytest

from conftest import fixture_path
from tf_mistral import (
    MistralConfig,
    TFMistralForCausalLM,
    TFMistralForSequenceClassification,
    TFMistralForTokenClassification,
    TFMistralModel,
)

HEADS = (TFMistralModel, TFMistralForCausalLM, TFMistralForSequenceClassification, TFMistralForTokenClassification)
SMALL = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, sliding_window=4, pad_token_id=0)
IDS = np.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]], np.int32)
MASK = (IDS != 0).astype(np.int32)


@pytest.fixture(scope="module")
def sequence_classifier():
    return TFMistralForSequenceClassification.from_pretrained(fixture_path("tiny_seqcls"), progress=False)


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def real(ref, tensor):
    """The entries of `tensor [B, S, ...]` at real (unpadded) positions."""
    return np.asarray(tensor)[ref["attention_mask"].astype(bool)]


def small(model_class, **overrides):
    model = model_class(MistralConfig(**dict(SMALL, **overrides)))
    model.build()
    return model


# ----------------------------------------------------------------------------------------------
# labels -> loss, against HF


def test_causal_lm_loss_equals_hfs_shifted_mean_ignoring_minus_100(causal_lm, reference):
    ref = reference("tiny_window", "call_reference")
    out = causal_lm("tiny_window")(ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])
    assert list(out)[:2] == ["loss", "logits"]
    assert out.loss.shape == () and out.loss.dtype == "float32"
    assert abs(float(out.loss) - float(ref["loss"])) < 1e-5


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification", "regression"])
def test_sequence_classification_loss_follows_problem_type_as_hf(sequence_classifier, reference, problem_type):
    ref = reference("tiny_seqcls", "call_reference")
    sequence_classifier.config.problem_type = problem_type
    try:
        out = sequence_classifier(ref["input_ids"], attention_mask=ref["attention_mask"],
                                  labels=ref[f"labels_{problem_type}"])
    finally:
        sequence_classifier.config.problem_type = None
    assert max_diff(out.logits, ref["logits"]) < 1e-4
    assert abs(float(out.loss) - float(ref[f"loss_{problem_type}"])) < 1e-5


@pytest.mark.parametrize("labels, expected", [
    (np.array([2, 0, 1]), "single_label_classification"),
    (np.array([[1.0, 0.0, 1.0]] * 3, np.float32), "multi_label_classification"),
])
def test_problem_type_is_chosen_from_the_labels_dtype_as_hf(labels, expected):
    from tf_mistral.models.head_losses import problem_type

    assert problem_type(MistralConfig(**SMALL, num_labels=3), labels) == expected
    assert problem_type(MistralConfig(**SMALL, num_labels=1), labels) == "regression"


def test_one_label_is_regression():
    model = small(TFMistralForSequenceClassification, num_labels=1)
    out = model(IDS, attention_mask=MASK, labels=np.array([0.5, -1.0], np.float32))
    expected = np.mean((np.asarray(out.logits)[:, 0] - [0.5, -1.0]) ** 2)
    assert abs(float(out.loss) - expected) < 1e-6


def test_token_classification_loss_equals_hfs(reference):
    ref = reference("tiny_tokcls", "call_reference")
    model = TFMistralForTokenClassification.from_pretrained(fixture_path("tiny_tokcls"), progress=False)
    out = model(ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])
    assert abs(float(out.loss) - float(ref["loss"])) < 1e-5


# ----------------------------------------------------------------------------------------------
# attentions and hidden states, against HF


def test_attentions_equal_hfs_per_layer_and_head(causal_lm, reference):
    ref = reference("tiny_window", "call_reference")
    out = causal_lm("tiny_window")(ref["input_ids"], attention_mask=ref["attention_mask"], output_attentions=True)
    assert len(out.attentions) == 2
    for ours, theirs in zip(out.attentions, ref["attentions"]):
        assert ours.shape == theirs.shape and ours.dtype == "float32"  # [batch, heads, seq, seq]
        queries_first = (0, 2, 1, 3)  # [batch, seq, heads, keys]: compare the real queries
        assert max_diff(
            real(ref, np.transpose(ours, queries_first)), real(ref, np.transpose(theirs, queries_first))
        ) < 1e-5


def test_hidden_states_equal_hfs(causal_lm, reference):
    ref = reference("tiny_window", "call_reference")
    out = causal_lm("tiny_window")(ref["input_ids"], attention_mask=ref["attention_mask"], output_hidden_states=True)
    assert len(out.hidden_states) == 3
    for ours, theirs in zip(out.hidden_states, ref["hidden_states"]):
        assert max_diff(real(ref, ours), real(ref, theirs)) < 1e-4


@pytest.mark.parametrize("model_class", HEADS)
def test_every_head_returns_attentions_and_hidden_states_when_the_config_asks(model_class):
    model = small(model_class, output_attentions=True, output_hidden_states=True)
    out = model(IDS, attention_mask=MASK)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 6, 16)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 6, 6)
    assert "attentions" not in model(IDS, attention_mask=MASK, output_attentions=False)


@pytest.mark.parametrize("model_class", HEADS)
def test_outputs_are_only_what_was_asked_by_default(model_class):
    out = small(model_class)(IDS, attention_mask=MASK)
    assert list(out) == ["last_hidden_state" if model_class is TFMistralModel else "logits"]


@pytest.mark.parametrize("hidden_act", ["silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast",
                                        "quick_gelu", "relu", "tanh"])
def test_each_hidden_act_gives_hfs_hidden_state(reference, hidden_act):
    ref = reference("tiny_window", "call_reference")
    model = TFMistralModel.from_pretrained(fixture_path("tiny_window"), progress=False, hidden_act=hidden_act)
    ours = model(ref["input_ids"], attention_mask=ref["attention_mask"]).last_hidden_state
    assert max_diff(real(ref, ours), real(ref, ref[f"last_hidden_state_{hidden_act}"])) < 1e-4


def test_activation_table_matches_the_configs_names():
    from tf_mistral.config import HIDDEN_ACTS
    from tf_mistral.layers.activations import ACTIVATIONS

    assert tuple(ACTIVATIONS) == HIDDEN_ACTS


def test_a_rematerialized_model_gives_hfs_loss_hidden_states_and_attentions(reference):
    from tf_mistral.training import rematerialize

    ref = reference("tiny_window", "call_reference")
    model = rematerialize(TFMistralForCausalLM.from_pretrained(fixture_path("tiny_window"), progress=False))
    out = model(ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"],
                output_hidden_states=True, output_attentions=True)
    assert abs(float(out.loss) - float(ref["loss"])) < 1e-5
    for ours, theirs in zip(out.hidden_states, ref["hidden_states"]):
        assert max_diff(real(ref, ours), real(ref, theirs)) < 1e-4
    queries_first = (0, 2, 1, 3)
    for ours, theirs in zip(out.attentions, ref["attentions"]):
        assert max_diff(
            real(ref, np.transpose(ours, queries_first)), real(ref, np.transpose(theirs, queries_first))
        ) < 1e-5


def test_a_rematerialized_model_continues_from_past_key_values(reference):
    from tf_mistral.training import rematerialize

    ref = reference("tiny_window")
    model = rematerialize(TFMistralForCausalLM.from_pretrained(fixture_path("tiny_window"), progress=False))
    first = model(ref["input_ids"][:, :25], use_cache=True)
    second = model(ref["input_ids"][:, 25:], past_key_values=first.past_key_values)
    assert max_diff(second.logits, ref["logits"][:, 25:]) < 1e-4


# ----------------------------------------------------------------------------------------------
# past_key_values, inputs_embeds, return_dict


def test_past_key_values_continue_the_sequence(causal_lm, reference):
    ref = reference("tiny_window")
    model, ids = causal_lm("tiny_window"), ref["input_ids"]  # 40 tokens, window 16
    first = model(ids[:, :25], use_cache=True)
    layer_k, layer_v = first.past_key_values[0]
    assert len(first.past_key_values) == 2 and layer_k.shape == layer_v.shape == (2, 2, 25, 32)
    second = model(ids[:, 25:30], past_key_values=first.past_key_values)
    third = model(ids[:, 30:], past_key_values=second.past_key_values)
    assert third.past_key_values[0][0].shape == (2, 2, 40, 32)
    assert max_diff(np.concatenate([second.logits, third.logits], axis=1), ref["logits"][:, 25:]) < 1e-4


def test_past_with_an_attention_mask_over_past_and_new_tokens_keeps_padding_out():
    model = small(TFMistralForCausalLM, sliding_window=None)
    full = model(IDS[1:, :3]).logits
    padded = model(np.array([[0, 0, 11, 12]]), attention_mask=np.array([[0, 0, 1, 1]]), use_cache=True,
                   position_ids=np.array([[0, 0, 0, 1]]))
    step = model(np.array([[13]]), attention_mask=np.array([[0, 0, 1, 1, 1]]), position_ids=np.array([[2]]),
                 past_key_values=padded.past_key_values)
    assert max_diff(step.logits[:, -1], full[:, -1]) < 1e-5


@pytest.mark.parametrize("model_class", HEADS)
def test_inputs_embeds_equal_input_ids(model_class):
    model = small(model_class)
    embeds = model.get_input_embeddings()(IDS)
    by_ids = model(IDS, attention_mask=MASK).to_tuple()[0]
    assert max_diff(model(inputs_embeds=embeds, attention_mask=MASK).to_tuple()[0], by_ids) == 0.0


def test_input_ids_and_inputs_embeds_together_are_refused():
    model = small(TFMistralModel)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(IDS, inputs_embeds=model.get_input_embeddings()(IDS))


def test_return_dict_false_gives_hfs_tuple_order():
    model = small(TFMistralForCausalLM)
    loss, logits, hidden_states = model(IDS, attention_mask=MASK, labels=IDS, output_hidden_states=True,
                                        return_dict=False)
    assert loss.shape == () and logits.shape == (2, 6, 50) and len(hidden_states) == 3


def test_return_dict_from_the_config():
    model = small(TFMistralForCausalLM, return_dict=False)
    assert isinstance(model(IDS), tuple)
