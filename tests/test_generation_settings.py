"""HF's generation settings in `generate`: logits processors (also on a padded batch), scores and
transition scores against HF transformers (tiny_window/generation.npz), `stop_strings`,
`GenerationConfig`, `num_return_sequences`, XLA-wrapped `generate`, and runtimes refusing settings
they cannot honour."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import FIXTURES, fixture_path
from tf_mistral import backends
from tf_mistral.generation import loop, processors
from tf_mistral.generation.config import GenerationConfig
from tf_mistral.generation.sampling import SamplingMode, warp

PROMPT = [[17, 250, 33, 904, 5, 61, 78]]


@pytest.fixture(scope="module")
def model(causal_lm):
    return causal_lm("tiny_window")


@pytest.fixture(scope="module")
def hf():
    return dict(np.load(f"{FIXTURES}/tiny_window/generation.npz"))


def generate_like_hf(model, hf, new_tokens, **settings):
    return model.generate(hf["input_ids"], max_new_tokens=new_tokens, eos_token_id=[], pad_token_id=0, **{
        "return_dict_in_generate": True, **settings,
    })


# --- parity with HF transformers ----------------------------------------------------------------

def test_repetition_penalty_tokens_scores_and_logits_equal_hf(model, hf):
    out = generate_like_hf(model, hf, 10, repetition_penalty=1.5, output_scores=True, output_logits=True)
    np.testing.assert_array_equal(out.sequences, hf["repetition_penalty_sequences"])
    np.testing.assert_allclose(np.stack(out.scores, 1), hf["repetition_penalty_scores"], atol=1e-4)
    np.testing.assert_allclose(np.stack(out.logits, 1), hf["repetition_penalty_logits"], atol=1e-4)


def test_transition_scores_equal_hf(model, hf):
    out = generate_like_hf(model, hf, 10, repetition_penalty=1.5, output_scores=True)
    scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    assert scores.shape == (2, 10) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, hf["repetition_penalty_transition_scores"], atol=1e-4)


def test_no_repeat_ngram_size_tokens_equal_hf(model, hf):
    out = generate_like_hf(model, hf, 12, no_repeat_ngram_size=2)
    np.testing.assert_array_equal(out.sequences, hf["no_repeat_ngram_sequences"])


def test_min_new_tokens_masks_the_end_token_as_hf(model, hf):
    sequences = model.generate(hf["input_ids"], max_new_tokens=8, eos_token_id=int(hf["min_new_tokens_eos"]),
                               pad_token_id=0, min_new_tokens=4)
    np.testing.assert_array_equal(sequences, hf["min_new_tokens_sequences"])


@pytest.mark.parametrize("setting, label", [
    (dict(repetition_penalty=1.5), "padded_repetition_penalty"),
    (dict(no_repeat_ngram_size=2), "padded_no_repeat_ngram"),
])
def test_processors_count_the_pad_ids_of_a_left_padded_batch_as_hf(model, hf, setting, label):
    out = model.generate(hf["padded_input_ids"], attention_mask=hf["padded_attention_mask"], max_new_tokens=6,
                         eos_token_id=[], pad_token_id=0, return_dict_in_generate=True, output_scores=True, **setting)
    np.testing.assert_array_equal(out.sequences, hf[f"{label}_sequences"])
    np.testing.assert_allclose(np.stack(out.scores, 1), hf[f"{label}_scores"], atol=1e-4)


def test_a_right_padded_batch_is_processed_as_the_same_padding_on_the_left(model, hf):
    left, mask = hf["padded_input_ids"], hf["padded_attention_mask"]
    order = np.argsort(1 - mask, axis=1, kind="stable")  # tokens first, then the padding ids as they were
    right = np.take_along_axis(left, order, axis=1)
    out = model.generate(right, attention_mask=np.take_along_axis(mask, order, axis=1), max_new_tokens=6,
                         eos_token_id=[], pad_token_id=0, no_repeat_ngram_size=2, return_dict_in_generate=True,
                         output_scores=True)
    np.testing.assert_array_equal(out.sequences[:, 7:], hf["padded_no_repeat_ngram_sequences"][:, 7:])
    np.testing.assert_allclose(np.stack(out.scores, 1), hf["padded_no_repeat_ngram_scores"], atol=1e-4)


@pytest.mark.parametrize("filters, expected", [
    (dict(top_k=3, min_tokens_to_keep=5), "warp_top_k_scores"),
    (dict(top_p=0.3, min_tokens_to_keep=4), "warp_top_p_scores"),
])
def test_sampling_scores_with_min_tokens_to_keep_equal_hf_warpers(hf, filters, expected):
    mode = SamplingMode(True, filters.get("top_k", 0), "top_p" in filters, filters["min_tokens_to_keep"])
    scores = warp(tf.constant(hf["warp_logits"]), mode, tf.constant(0.7), tf.constant(filters.get("top_p", 1.0)))
    np.testing.assert_array_equal(np.isfinite(scores), np.isfinite(hf[expected]))
    kept = np.isfinite(hf[expected])
    np.testing.assert_allclose(scores.numpy()[kept], hf[expected][kept], rtol=1e-5)


# --- the default loop stays as it was -------------------------------------------------------------

def test_the_default_loop_carries_no_processor_state(model):
    assert not loop.Sampling(SamplingMode()).processing.active
    state = loop.start(model, tf.constant(PROMPT), tf.ones([1, 7], tf.int32), 4, 16, 0)
    assert set(state) == {"logits", "tokens", "finished", "token", "step", "cache", "columns", "pad_start"}


def test_each_setting_adds_only_its_own_state(model):
    processing = processors.Processing(repetition_penalty=1.2, output_logits=True)
    state = loop.start(model, tf.constant(PROMPT), tf.ones([1, 7], tf.int32), 4, 16, 0, processing)
    assert set(state) - {"logits", "tokens", "finished", "token", "step", "cache", "columns", "pad_start"} == {
        "seen", "raw_logits"
    }


# --- outputs and settings ----------------------------------------------------------------------

def test_greedy_scores_are_the_logits_without_processors(model):
    out = model.generate(PROMPT, max_new_tokens=4, eos_token_id=[], return_dict_in_generate=True,
                         output_scores=True, output_logits=True)
    assert len(out.scores) == 4 and out.scores[0].shape == (1, 1000) and out.scores[0].dtype == np.float32
    np.testing.assert_array_equal(np.stack(out.scores), np.stack(out.logits))
    np.testing.assert_array_equal(out["sequences"], model.generate(PROMPT, max_new_tokens=4, eos_token_id=[]))
    assert out.keys() == ["sequences", "scores", "logits"]


def test_sampled_scores_keep_only_the_filtered_tokens(model):
    out = model.generate(PROMPT, max_new_tokens=3, do_sample=True, top_k=4, seed=5, eos_token_id=[],
                         return_dict_in_generate=True, output_scores=True)
    assert [int(np.isfinite(step).sum()) for step in out.scores] == [4, 4, 4]
    chosen = model.compute_transition_scores(out.sequences, out.scores)
    assert np.isfinite(chosen).all()


def test_num_return_sequences_samples_rows_per_prompt_in_order(model):
    two_prompts = PROMPT + [[9, 8, 7, 6, 5, 4, 3]]
    out = model.generate(two_prompts, max_new_tokens=6, do_sample=True, seed=3, num_return_sequences=3, eos_token_id=[])
    assert out.shape == (6, 13)
    np.testing.assert_array_equal(out[:, :7], np.repeat(two_prompts, 3, axis=0))
    assert len({tuple(row) for row in out[:3, 7:]}) > 1


def test_a_generation_config_object_equals_the_same_keyword_arguments(model):
    settings = dict(max_new_tokens=5, do_sample=True, top_k=8, seed=9, repetition_penalty=1.3, eos_token_id=[])
    config = GenerationConfig(**settings)
    np.testing.assert_array_equal(model.generate(PROMPT, generation_config=config), model.generate(PROMPT, **settings))
    np.testing.assert_array_equal(  # keyword arguments override the object
        model.generate(PROMPT, generation_config=config, max_new_tokens=2),
        model.generate(PROMPT, generation_config=config)[:, :9],
    )


def test_generation_config_round_trips_with_hf_keys_kept(tmp_path):
    config = GenerationConfig.from_pretrained(fixture_path("tiny_window"))
    assert (config.bos_token_id, config.eos_token_id, config.extra["use_cache"]) == (1, 2, True)
    config.update(top_k=7, do_sample=True)
    config.save_pretrained(tmp_path)
    again = GenerationConfig.from_pretrained(tmp_path)
    assert again == config and dict(again) == config.to_dict()


def test_the_model_takes_a_generation_config_json_dict():
    from tf_mistral import MistralConfig, TFMistralForCausalLM

    model = TFMistralForCausalLM(MistralConfig.from_json_file(fixture_path("tiny_window")))
    model.generation_config = {"eos_token_id": 5, "top_k": 3}
    assert isinstance(model.generation_config, GenerationConfig) and model.generation_config.top_k == 3


@pytest.mark.parametrize("settings, message", [
    (dict(beams=4), "generate got unknown arguments \\['beams'\\]"),
    (dict(num_beams=4), "num_beams=4 is not implemented"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be an integer >= 0"),
    (dict(min_tokens_to_keep=0), "min_tokens_to_keep must be an integer >= 1"),
    (dict(num_return_sequences=2), "num_return_sequences=2 needs do_sample=True"),
    (dict(output_scores=True), "need return_dict_in_generate=True"),
    (dict(stop_strings="x"), "stop_strings needs a tokenizer"),
    (dict(stop_strings=[""]), "stop_strings must be a non-empty str"),
])
def test_bad_settings_raise_a_clear_error(model, settings, message):
    with pytest.raises(ValueError, match=message):
        model.generate(PROMPT, **settings)


def test_a_generation_config_json_asking_for_beam_search_is_refused(model):
    config = GenerationConfig.from_dict({"num_beams": 4, "eos_token_id": 2})
    with pytest.raises(ValueError, match="num_beams=4 is not implemented"):
        model.generate(PROMPT, generation_config=config)


# --- stop strings --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tokenizer():
    from tf_mistral.tokenizer import MistralTokenizer

    return MistralTokenizer.from_pretrained(fixture_path("tiny_tokenizer"))


def test_stop_strings_end_the_rows_hf_ends_and_pad_them_as_hf(model, hf, tiny_tokenizer):
    sequences = model.generate(hf["input_ids"], max_new_tokens=12, eos_token_id=2, pad_token_id=0,
                               stop_strings=[str(hf["stop_string"])], tokenizer=tiny_tokenizer)
    np.testing.assert_array_equal(sequences, hf["stop_strings_sequences"])


def test_a_row_ends_at_the_token_that_completes_a_stop_string_and_the_loop_stops_there(model, tiny_tokenizer):
    full = model.generate(PROMPT, max_new_tokens=12, eos_token_id=[])[0]
    texts = tiny_tokenizer.batch_decode([full[:7 + count].tolist() for count in range(13)])
    count = next(c for c in range(4, 13) if len(texts[c]) > len(texts[c - 1]) + 1)  # a token that adds 2+ characters
    stop = texts[count][len(texts[count - 1]) - 1:len(texts[count - 1]) + 1]  # spans the last two tokens
    assert stop not in texts[count - 1][len(texts[0]):]
    columns = []
    out = model.generate(PROMPT, max_new_tokens=12, eos_token_id=[], stop_strings=[stop], tokenizer=tiny_tokenizer,
                         streamer=columns.append)
    np.testing.assert_array_equal(out[0], full[:7 + count])
    assert len(columns) == count


def test_without_stop_strings_nor_streamer_generation_is_one_compiled_loop(model):
    model._generation_functions = {}
    model.generate(PROMPT, max_new_tokens=3, eos_token_id=[])
    assert sorted(key[0] for key in model._generation_functions) == ["decode", "start"]


# --- XLA-wrapped generate ----------------------------------------------------------------------

def test_generate_wrapped_in_an_xla_function_equals_hf_generate(model, reference):
    ref = reference("tiny_window")
    prompt, expected = ref["gen_short_prompt_input"], ref["gen_short_prompt"]
    new_tokens = expected.shape[1] - prompt.shape[1]
    xla_generate = tf.function(model.generate, jit_compile=True)
    out = xla_generate(tf.constant(prompt), max_new_tokens=new_tokens, eos_token_id=[])
    np.testing.assert_array_equal(out.numpy(), expected)


# --- runtimes that cannot honour a setting -----------------------------------------------------

@pytest.mark.parametrize("run, runtime", [
    (backends.tflite_generate, "the TFLite runner"),
    (backends.saved_model_generate, "the SavedModel's generate signature"),
])
def test_exported_runtimes_refuse_settings_they_cannot_honour(run, runtime):
    with pytest.raises(ValueError, match=f"{runtime} cannot honour repetition_penalty=1.2: it supports do_sample"):
        run(None, [1], repetition_penalty=1.2)


def test_the_tflite_runner_refuses_settings_it_cannot_honour():
    from tf_mistral.tflite_runner import TFLiteRunner

    runner = TFLiteRunner.__new__(TFLiteRunner)  # the check runs before any file is read
    with pytest.raises(ValueError, match="TFLiteRunner.generate cannot honour no_repeat_ngram_size=3"):
        runner.generate([1, 5], no_repeat_ngram_size=3)

