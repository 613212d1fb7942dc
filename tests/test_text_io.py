"""KerasHub's habits on the causal LM: an attached preprocessor (strings in `generate` and
`predict`) and `score()`."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import fixture_path


@pytest.fixture(scope="module")
def model(causal_lm):
    return causal_lm("tiny_window")


@pytest.fixture(scope="module")
def text_model():
    from tf_mistral import TFMistralForCausalLM

    return TFMistralForCausalLM.from_pretrained(fixture_path("tiny_window"), progress=False,
                                                preprocessor=fixture_path("tiny_tokenizer"))


def test_generate_on_strings_returns_each_prompt_and_its_continuation(text_model):
    tokenizer = text_model.preprocessor.tokenizer
    prompts = ["Once upon a time", "Hi"]
    texts = text_model.generate(prompts, max_new_tokens=5, eos_token_id=[])
    batch = tokenizer(prompts, padding=True, padding_side="left", return_tensors="np")
    ids = text_model.generate(
        batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5, eos_token_id=[]
    )
    assert texts == tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert (
        texts[0].startswith("Once upon a time")
        and text_model.generate("Hi", max_new_tokens=5, eos_token_id=[]) == texts[1]
    )


def test_predict_on_strings_equals_predict_on_the_preprocessed_ids(text_model):
    text_model.preprocessor.sequence_length = 12
    inputs = text_model.preprocessor_outputs(["Once upon a time"])
    np.testing.assert_allclose(text_model.predict(["Once upon a time"], verbose=0)["logits"],
                               text_model.predict(inputs, verbose=0)["logits"], atol=1e-6)


def test_strings_without_a_preprocessor_are_refused(model):
    with pytest.raises(ValueError, match="has no preprocessor"):
        model.generate("Hi")


def test_score_gives_the_logits_and_each_tokens_loss(model, reference):
    ids = reference("tiny_window")["input_ids"][:, :12]
    logits = model.score(ids)
    np.testing.assert_allclose(logits, model(ids).logits, atol=1e-6)
    loss = model.score(ids[:, :-1], scoring_mode="loss", target_ids=ids[:, 1:])
    assert loss.shape == (2, 11) and loss.dtype == tf.float32
    log_probs = tf.nn.log_softmax(logits[:, :-1]).numpy()
    expected = -np.take_along_axis(log_probs, ids[:, 1:, None].astype(np.int64), axis=-1)[..., 0]
    np.testing.assert_allclose(loss, expected, atol=1e-4)


def test_score_calls_the_layer_hook_on_the_embeddings_and_each_layer_and_uses_what_it_returns(model, reference):
    ids = reference("tiny_window")["input_ids"][:1, :8]
    seen = []

    def record(x, i):
        seen.append(i)
        return x

    np.testing.assert_allclose(model.score(ids, layer_intercept_fn=record), model.score(ids), atol=1e-6)
    assert seen == [-1, 0, 1]
    zeroed = model.score(ids, layer_intercept_fn=lambda x, i: x * 0 if i == 1 else x)
    np.testing.assert_allclose(
        zeroed, model.score(np.zeros_like(ids), layer_intercept_fn=lambda x, i: x * 0), atol=1e-6
    )
