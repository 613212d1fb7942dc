"""`generate()` against HF transformers' greedy generations (fixtures), and its contract: compiled
loops reused across a bucket, seeded sampling, stop tokens, streaming, the rolling cache, errors."""

import io

import numpy as np
import pytest
import tensorflow as tf

from conftest import fixture_path
from tf_mistral import TextStreamer, TFMistralForCausalLM
from tf_mistral import cache as kv_cache
from tf_mistral.generation import loop
from tf_mistral.generation.sampling import SamplingMode

PROMPT = [[17, 250, 33, 904, 5, 61, 78]]


@pytest.fixture(scope="module")
def model(causal_lm):
    return causal_lm("tiny_window")  # sliding window 16


def greedy(model, ids, **kwargs):
    return model.generate(ids, eos_token_id=[], **kwargs)


# --- parity with HF transformers `generate` (greedy, eos disabled) ---------------------------

@pytest.mark.parametrize("name, case", [
    ("tiny_window", "gen_long_prompt"),  # 40-token prompt + 60: crosses the window of 16
    ("tiny_window", "gen_short_prompt"),
    ("tiny_nowindow", "gen_long_prompt"),
])
def test_greedy_tokens_equal_hf_generate(causal_lm, reference, name, case):
    expected = reference(name)[case]
    prompt = reference(name)[case + "_input"]
    out = greedy(causal_lm(name), prompt, max_new_tokens=expected.shape[1] - prompt.shape[1])
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", ["tiny_window", "tiny_nowindow"])
@pytest.mark.parametrize("jit_compile", [True, False])  # the XLA loop and the plain TF graph loop
def test_left_padded_batch_equals_hf_generate(causal_lm, reference, name, jit_compile):
    ref = reference(name)
    ids, mask, expected = ref["gen_batch_input_ids"], ref["gen_batch_attention_mask"], ref["gen_batch_output"]
    out = greedy(causal_lm(name), ids, attention_mask=mask, max_new_tokens=expected.shape[1] - ids.shape[1],
                 jit_compile=jit_compile)
    np.testing.assert_array_equal(out, expected)


# --- the HF return contract ------------------------------------------------------------------

def test_returns_the_prompt_as_given_followed_by_the_new_tokens(model):
    out = greedy(model, tf.constant(PROMPT), max_new_tokens=9)
    assert out.shape == (1, len(PROMPT[0]) + 9) and out.dtype == np.int32
    np.testing.assert_array_equal(out[:, :7], PROMPT)
    np.testing.assert_array_equal(greedy(model, PROMPT[0], max_new_tokens=9), out)  # 1-D input
    np.testing.assert_array_equal(greedy(model, PROMPT, max_length=7 + 9), out)


def test_right_padded_rows_are_left_aligned_before_generating(model, reference):
    ref = reference("tiny_window")
    ids, mask, expected = ref["gen_batch_input_ids"], ref["gen_batch_attention_mask"], ref["gen_batch_output"]
    right_ids, right_mask = np.zeros_like(ids), np.zeros_like(mask)
    for row in range(len(ids)):
        real = ids[row][mask[row] == 1]
        right_ids[row, :real.size], right_mask[row, :real.size] = real, 1
    out = greedy(model, right_ids, attention_mask=right_mask, max_new_tokens=expected.shape[1] - ids.shape[1])
    np.testing.assert_array_equal(out[:, :ids.shape[1]], right_ids)
    np.testing.assert_array_equal(out[:, ids.shape[1]:], expected[:, ids.shape[1]:])


# --- compiled once per bucket ----------------------------------------------------------------

def test_new_prompt_lengths_and_token_counts_in_one_bucket_do_not_retrace(model):
    greedy(model, PROMPT, max_new_tokens=5)
    before = model.generation_traces
    for length, new_tokens in [(3, 5), (11, 7), (16, 20), (9, 32)]:  # prompt bucket 16, new-token bucket 32
        ids = np.random.default_rng(length).integers(3, 1000, size=(1, length))
        assert greedy(model, ids, max_new_tokens=new_tokens).shape == (1, length + new_tokens)
    assert model.generation_traces == before
    greedy(model, np.full((1, 17), 5), max_new_tokens=5)  # the next prompt bucket: a new prefill,
    assert model.generation_traces == before + 1  # while the decode loop (same cache of 16) is reused


# --- sampling --------------------------------------------------------------------------------

def sample(model, **kwargs):
    return model.generate(PROMPT, max_new_tokens=30, do_sample=True, eos_token_id=[], **kwargs)


def test_a_seed_reproduces_a_sample_and_another_seed_differs(model):
    np.testing.assert_array_equal(sample(model, seed=7), sample(model, seed=7))
    assert not np.array_equal(sample(model, seed=7), sample(model, seed=8))


@pytest.mark.parametrize("seed", [-2**31, 2**31 - 1])
def test_seeds_at_both_ends_of_the_int32_range_reproduce_a_sample(model, seed):
    np.testing.assert_array_equal(sample(model, seed=seed), sample(model, seed=seed))


@pytest.mark.parametrize("top_k", [1000, 1001, 5000])  # the fixture's vocabulary has 1000 ids
def test_a_top_k_of_the_whole_vocabulary_or_more_samples_as_no_filter(model, top_k):
    np.testing.assert_array_equal(sample(model, seed=4, top_k=top_k), sample(model, seed=4))


@pytest.mark.parametrize("filters", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4)])
def test_sampling_that_keeps_only_the_top_token_is_greedy(model, filters):
    np.testing.assert_array_equal(sample(model, seed=3, **filters), greedy(model, PROMPT, max_new_tokens=30))


@pytest.mark.parametrize("temperature", [0.25, 1.0])
def test_sampled_first_tokens_follow_the_tempered_softmax(model, temperature):
    rows = 400  # identical rows draw independent samples
    first = model.generate(np.repeat(PROMPT, rows, axis=0), max_new_tokens=1, do_sample=True, seed=11,
                           temperature=temperature, eos_token_id=[])[:, -1]
    logits = model(np.array(PROMPT)).logits.numpy()[0, -1].astype(np.float64) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    for token in np.argsort(probs)[-3:]:  # the likeliest tokens; 4 standard deviations of a count
        assert abs(np.mean(first == token) - probs[token]) < 4 * np.sqrt(probs[token] / rows) + 1e-3


# --- stopping --------------------------------------------------------------------------------

def test_each_row_stops_at_any_of_its_eos_ids_then_emits_padding(model, reference):
    ref = reference("tiny_window")
    ids, mask = ref["gen_batch_input_ids"][:2], ref["gen_batch_attention_mask"][:2]
    free = greedy(model, ids, attention_mask=mask, max_new_tokens=20)[:, ids.shape[1]:]
    stops = _distinct_first_occurrences(free)  # row -> step at which its own eos token appears first
    eos = [int(free[row, step]) for row, step in stops.items()]
    out = model.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=0)
    new = out[:, ids.shape[1]:]
    assert new.shape[1] == max(stops.values()) + 1  # ends once every row has ended
    for row, step in stops.items():
        np.testing.assert_array_equal(new[row, :step + 1], free[row, :step + 1])
        assert (new[row, step + 1:] == 0).all()


def _distinct_first_occurrences(tokens):
    """{row: step} for two rows: each row's token at its step occurs in neither row before then."""
    for step0 in range(2, tokens.shape[1]):
        for step1 in range(step0 + 3, tokens.shape[1]):
            a, b = tokens[0, step0], tokens[1, step1]
            if a not in tokens[0, :step0] and a not in tokens[1, :step1 + 1] \
                    and b not in tokens[1, :step1] and b not in tokens[0, :step0 + 1]:
                return {0: step0, 1: step1}
    raise AssertionError("no distinct stop tokens found in the fixture generation")


# --- streaming -------------------------------------------------------------------------------

@pytest.mark.parametrize("sampled", [False, True])
def test_streamed_tokens_equal_the_fused_loop(model, sampled):
    kwargs = dict(max_new_tokens=25, eos_token_id=[], do_sample=sampled, seed=5, top_k=20 if sampled else None)
    columns = []
    streamed = model.generate(PROMPT, streamer=lambda ids: columns.append(np.asarray(ids)), **kwargs)
    np.testing.assert_array_equal(streamed, model.generate(PROMPT, **kwargs))
    np.testing.assert_array_equal(np.stack(columns, axis=1), streamed[:, 7:])


def test_text_streamer_prints_the_decoded_text(model, tmp_path):
    class Tokenizer:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(str(i) for i in ids)

    path = tmp_path / "out.txt"
    with open(path, "w") as file:
        out = model.generate(PROMPT, max_new_tokens=6, eos_token_id=[], streamer=TextStreamer(Tokenizer(), file=file))
    assert path.read_text().strip() == " ".join(str(i) for i in out[0, 7:])


def test_text_streamer_keeps_the_space_before_the_first_new_word(tok_v1):
    prompt = tok_v1.encode("Alice was")
    whole = tok_v1.encode("Alice was beginning to")
    out = io.StringIO()
    streamer = TextStreamer(tok_v1, prompt_ids=prompt, file=out)
    for token in whole[len(prompt):]:
        streamer.put([token])
    assert out.getvalue() == " beginning to"
    streamer.end()
    assert out.getvalue() == " beginning to\n" and streamer.tokens_per_second > 0


def test_text_streamer_waits_for_a_whole_character_and_ends_with_the_rest(tok_v1):
    ids = tok_v1.encode("🦜", add_special_tokens=False)  # "▁" then 4 byte pieces (byte fallback)
    out = io.StringIO()
    streamer = TextStreamer(tok_v1, file=out)
    for token in ids[:3]:
        streamer.put(token)
    assert out.getvalue() == ""  # "▁" (the stripped dummy prefix) and half a UTF-8 character
    streamer.put(ids[3])
    streamer.end()  # a generation that ends mid-character shows what it has
    assert out.getvalue() == tok_v1.decode(ids[:4]) + "\n" and tok_v1.decode(ids[:4]).endswith("\ufffd")


def test_text_streamer_prints_a_character_once_whole(tok_v1):
    ids = tok_v1.encode("🦜", add_special_tokens=False)
    out = io.StringIO()
    streamer = TextStreamer(tok_v1, file=out)
    for token in ids:
        streamer.put(token)
    assert out.getvalue() == "🦜" == tok_v1.decode(ids)


def test_jit_compile_defaults_to_xla_except_in_bfloat16():
    for dtype, xla in (("float32", True), ("bfloat16", False)):
        model = TFMistralForCausalLM.from_pretrained(fixture_path("tiny_window"), dtype=dtype, progress=False)
        greedy(model, PROMPT, max_new_tokens=2)
        assert {key[-1] for key in model._generation_functions} == {xla}  # keys end with jit_compile


# --- weights changed after a first generate ------------------------------------------------

@pytest.mark.filterwarnings("ignore:Layer .* does not have a `quantize` method")
def test_generate_after_quantize_or_lora_runs_the_new_weights():
    def fresh():
        return TFMistralForCausalLM.from_pretrained(fixture_path("tiny_window"), progress=False)

    def with_adapters(model):
        model.enable_lora(4)
        for variable in model.trainable_weights:  # LoRA's B starts at zero: make the adapters count
            variable.assign(np.full(variable.shape, 0.05, variable.dtype))
        return model

    for change in (lambda model: model.quantize("int8"), with_adapters):
        changed_later, changed_first = fresh(), fresh()
        unchanged = greedy(changed_later, PROMPT, max_new_tokens=20)
        change(changed_later)
        change(changed_first)
        expected = greedy(changed_first, PROMPT, max_new_tokens=20)
        assert not np.array_equal(expected, unchanged)
        np.testing.assert_array_equal(greedy(changed_later, PROMPT, max_new_tokens=20), expected)


# --- the rolling cache -----------------------------------------------------------------------

def test_generation_far_past_the_window_keeps_window_slots_and_matches_the_full_forward(model):
    window = model.config.sliding_window
    ids = tf.constant(PROMPT, tf.int32)
    sampling = loop.Sampling(SamplingMode(), eos_token_ids=(), pad_token_id=0)
    cache_length = kv_cache.cache_length(10_000, window)
    state = loop.first_token(loop.start(model, ids, tf.ones_like(ids), 8 * window, cache_length, 0), sampling)
    step = tf.function(lambda state: loop.decode_step(model, state, sampling), jit_compile=True)
    for _ in range(8 * window - 1):
        state = step(state)
    for k, v in state["cache"]:
        assert k.shape[2] == window and v.shape[3] == window
    tokens = np.concatenate([PROMPT, state["tokens"].numpy()], axis=1)
    logits = model(tokens[:, :-1]).logits.numpy()[0, 6:]  # the full forward, no cache
    top2 = np.sort(logits, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # leave out near-ties, where summation order may decide
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(logits.argmax(-1)[clear], tokens[0, 7:][clear])


@pytest.mark.parametrize("pad", [0, 5])
def test_chunked_prefill_of_a_long_prompt_equals_the_full_forward(model, pad):
    window = model.config.sliding_window
    ids = np.random.default_rng(1).integers(3, 1000, size=(2, 3 * window + 5)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :pad] = 0
    cache = kv_cache.empty_cache(model.config, 2, window, "float32")
    logits, cache, _, _ = loop.prefill(model, tf.constant(ids), loop.pad_starts(mask), cache, kv_cache.SLICE_WRITES)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    expected = model(ids, attention_mask=mask, position_ids=positions).logits.numpy()[:, -1]
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4)


def test_a_prefill_of_the_last_token_alone_fills_every_layer_of_the_cache(model):
    ids = np.random.default_rng(2).integers(3, 1000, size=(2, 12)).astype(np.int32)
    empty = kv_cache.empty_cache(model.config, 2, model.config.sliding_window, "float32")
    logits, cache = model.forward_with_cache(tf.constant(ids), empty, 0)  # last_only: the default
    every_logit, full_cache = model.forward_with_cache(tf.constant(ids), empty, 0, last_only=False)
    assert logits.shape == (2, 1, model.config.vocab_size)
    np.testing.assert_allclose(logits.numpy()[:, 0], model(ids).logits.numpy()[:, -1], atol=1e-5)
    np.testing.assert_allclose(every_logit.numpy(), model(ids).logits.numpy(), atol=1e-5)
    for (k, v), (full_k, full_v) in zip(cache, full_cache):
        np.testing.assert_array_equal(k.numpy(), full_k.numpy())
        np.testing.assert_array_equal(v.numpy(), full_v.numpy())


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(input_ids=[[]]), "empty"),
    (dict(max_new_tokens=600), "max_position_embeddings"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_length=5), "max_new_tokens"),
    (dict(attention_mask=[[0] * 7]), "all padding"),
    (dict(attention_mask=[[1] * 6]), "shape"),
    (dict(attention_mask=[[0, 1, 2, 1, 1, 1, 1]]), r"attention_mask must hold only 0 .* and 1 .*, got 2"),
    (dict(attention_mask=[[1, 1, 1, 1, 1, 1, -1]]), r"attention_mask must hold only 0 .* and 1 .*, got -1"),
    (dict(input_ids=[[5, 1000]]), r"\[0, 1000\)"),
    (dict(input_ids=[[1.5, 2.0]]), "integer"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(do_sample=True, temperature=-1.0), "temperature"),
    (dict(do_sample=True, temperature=float("inf")), "temperature must be a finite number > 0, got inf"),
    (dict(do_sample=True, temperature=float("nan")), "temperature must be a finite number > 0, got nan"),
    (dict(do_sample=True, top_p=float("nan")), "top_p"),
    (dict(do_sample=True, seed=2**31), r"seed must be an integer in \[-2147483648, 2147483647\].*got 2147483648"),
    (dict(do_sample=True, seed=-2**31 - 1), r"seed must be an integer in \[-2147483648, 2147483647\]"),
    (dict(do_sample=True, seed=1.5), "seed must be an integer"),
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(do_sample=True, top_k=-2), "top_k"),
    (dict(do_sample="yes"), "do_sample"),
    (dict(jit_compile="xla"), "jit_compile"),
])
def test_bad_input_raises_a_clear_error(model, kwargs, message):
    kwargs = {"input_ids": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.generate(**kwargs)
