"""MistralTokenizer and MistralPreprocessor against the `sentencepiece` library."""

import pathlib
import random
import re
import subprocess
import sys

import keras
import mistral_common
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from conftest import fixture_path
from tf_mistral.tokenizer import MistralPreprocessor, MistralTokenizer, load_tokenizer

HARD_TEXTS = [
    "",
    " ",
    "   ",
    "Hello",
    " Hello",
    "  Hello  world  ",
    "trailing   ",
    "a\tb\t\tc",
    "line\nbreak\n\n\nend\n",
    "windows\r\nline\r\n",
    "日本語のテキストと漢字",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "Привет, мир!",
    "Ελληνικά και עברית",
    "한국어 텍스트",
    "👩\u200d👩\u200d👧\u200d👦 family 🏳️\u200d🌈 flag 👍🏽",
    "\x00\x01\x07 control \x1b[0m \x7f",
    "def f(x):\n    return {'a': x ** 2}  # comment\n",
    "3.14159 1,000,000 2024-01-01 0x1F",
    "[INST] literal control text [/INST] <s> </s> <unk>",
    "\u200b zero width \u00a0 nbsp \u3000 ideographic space",
    "e\u0301 vs é, ﬁ ligature, ① circled",
    "\ufffd replacement",
]


def random_unicode_texts(count, seed=0):
    """Strings mixing many scripts, emoji, private-use and astral characters, and whitespace."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0x80, 0x2FF), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0xE000, 0xE0FF), (0x10000, 0x10FFFF)]
    spaces = [" ", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0"]

    def character():
        low, high = rng.choice(ranges)
        code = rng.randint(low, high)
        return chr(code) if not 0xD800 <= code <= 0xDFFF else "x"

    return ["".join(rng.choice(spaces) if rng.random() < 0.25 else character() for _ in range(rng.randrange(60)))
            for _ in range(count)]


@pytest.fixture(scope="module")
def sp(tok):
    return sentencepiece.SentencePieceProcessor(model_proto=tok.model_proto)


# ---- encoding equals sentencepiece --------------------------------------------------------------


def test_ids_equal_sentencepiece_on_hard_text(tok, sp):
    assert tok(HARD_TEXTS)["input_ids"] == sp.encode(HARD_TEXTS, add_bos=True)


def test_ids_equal_sentencepiece_on_random_unicode(tok, sp):
    texts = random_unicode_texts(500)
    assert tok(texts)["input_ids"] == sp.encode(texts, add_bos=True)


def test_leading_trailing_and_repeated_spaces_are_kept_like_sentencepiece(tok, sp):
    texts = [" x", "  x", "x ", "x  ", "x  y", " \t x", "   "]
    ids = tok(texts)["input_ids"]
    assert ids == sp.encode(texts, add_bos=True)
    assert len(set(map(tuple, ids))) == len(texts)  # no whitespace was collapsed


def test_100k_character_string_equals_sentencepiece(tok, sp):
    text = "word " * 8000 + "x" * 40000 + " 日本語" * 5000 + "🙂" * 5000
    assert len(text) >= 100_000
    assert tok.encode(text) == sp.encode(text, add_bos=True)


def test_literal_inst_text_is_encoded_as_text_not_control_ids():
    v3 = MistralTokenizer.default("v3")
    ids = v3.encode("[INST] hi [/INST]", add_special_tokens=False)
    assert v3.special_tokens["[INST]"] not in ids and v3.special_tokens["[/INST]"] not in ids


def test_add_bos_is_default_and_add_eos_is_optional(tok, sp):
    assert tok.encode("Hi") == sp.encode("Hi", add_bos=True)
    with_eos = MistralTokenizer(tok.model_proto, add_bos=False, add_eos=True)
    assert with_eos.encode("Hi") == sp.encode("Hi", add_eos=True)


def test_empty_string_encodes_to_bos_alone(tok):
    assert tok.encode("") == [tok.bos_token_id]


# ---- decoding -----------------------------------------------------------------------------------


def test_decode_round_trips_hard_text(tok):
    assert tok.batch_decode(tok(HARD_TEXTS)["input_ids"], skip_special_tokens=True) == HARD_TEXTS


def test_decode_equals_sentencepiece_on_random_ids(tok, sp):
    rng = random.Random(0)
    likely = [sp.piece_to_id("\u2581"), sp.piece_to_id("\u2581\u2581"), 13, *range(3, 300)]  # spaces, bytes
    sequences = [[rng.choice(likely) if rng.random() < 0.6 else rng.randrange(3, tok.vocab_size)
                  for _ in range(rng.randrange(8))] for _ in range(1000)]
    sequences = [[i for i in s if not sp.is_control(i)] for s in sequences]
    assert tok.batch_decode(sequences) == sp.decode(sequences)


def test_decode_keeps_the_space_after_a_lone_dummy_prefix_piece(tok_v1):
    # " Hello" -> ["▁", "▁Hello"]; tensorflow-text's own decoder would return "Hello".
    ids = tok_v1.encode(" Hello")
    assert ids == [1, 28705, 22557]
    assert tok_v1.decode(ids, skip_special_tokens=True) == " Hello"


def test_skip_special_tokens_drops_control_tokens_and_padding(tok_v1):
    batch = tok_v1(["Hi there", "Hi"], padding=True)["input_ids"]
    assert tok_v1.batch_decode(batch + [[1, 22557, 2]], skip_special_tokens=True) == ["Hi there", "Hi", "Hello"]


def test_special_tokens_are_written_as_pieces_when_not_skipped(tok_v1):
    assert tok_v1.batch_decode([[0, 0, 1, 15359, 2]]) == ["<unk><unk><s>Hi</s>"]


def test_batch_decode_accepts_tf_numpy_ragged_and_lists(tok_v1):
    rows = [[1, 15359], [1, 22557]]
    expected = ["Hi", "Hello"]
    for ids in (rows, np.array(rows), tf.constant(rows), tf.ragged.constant(rows), [np.array(r) for r in rows]):
        assert tok_v1.batch_decode(ids, skip_special_tokens=True) == expected
    assert tok_v1.decode(tf.constant(rows[0]), skip_special_tokens=True) == "Hi"


# ---- padding, truncation, tensors ---------------------------------------------------------------


def test_padding_is_on_the_left_by_default_with_attention_mask(tok_v1):
    batch = tok_v1(["My favourite condiment is", "Hi"], padding=True)
    assert batch["input_ids"][1] == [0, 0, 0, 0, 1, 15359]
    assert batch["attention_mask"] == [[1] * 6, [0, 0, 0, 0, 1, 1]]


def test_right_padding_on_request(tok_v1):
    batch = tok_v1(["My favourite condiment is", "Hi"], padding=True, padding_side="right")
    assert batch["input_ids"][1] == [1, 15359, 0, 0, 0, 0]
    assert batch["attention_mask"][1] == [1, 1, 0, 0, 0, 0]


def test_pad_token_id_is_configurable(tok_v1):
    tok = MistralTokenizer(tok_v1.model_proto, pad_token_id=2)
    assert tok(["a b c", "a"], padding=True)["input_ids"][1][:2] == [2, 2]


def test_left_truncation_keeps_bos_and_the_end_of_the_text(tok_v1):
    full = tok_v1.encode("one two three four five six")
    assert tok_v1("one two three four five six", truncation=True, max_length=4)["input_ids"] == [1, *full[-3:]]


def test_right_truncation_keeps_the_start_and_eos(tok_v1):
    tok = MistralTokenizer(tok_v1.model_proto, add_eos=True, padding_side="right")
    full = tok.encode("one two three four five six")
    assert tok("one two three four five six", truncation=True, max_length=4)["input_ids"] == [*full[:3], 2]


def test_truncation_side_can_differ_from_padding_side(tok_v1):
    full = tok_v1.encode("one two three four")
    assert tok_v1("one two three four", truncation=True, max_length=3, truncation_side="right")["input_ids"] == full[:3]


def test_too_long_text_without_truncation_is_an_error(tok_v1):
    with pytest.raises(ValueError, match=r"text 1 has \d+ tokens, more than max_length=3"):
        tok_v1(["a", "one two three four"], padding="max_length", max_length=3)


def test_padding_to_max_length_and_multiple_of(tok_v1):
    assert np.shape(
        tok_v1(["a", "b c"], padding="max_length", max_length=7, return_tensors="np")["input_ids"]
    ) == (2, 7)
    assert np.shape(
        tok_v1(["a", "b c d e f"], padding=True, pad_to_multiple_of=8, return_tensors="np")["input_ids"]
    ) == (2, 8)


def test_return_tensors_gives_int32_tf_and_numpy(tok_v1):
    tf_batch = tok_v1(["a", "b c"], padding=True, return_tensors="tf")
    np_batch = tok_v1(["a", "b c"], padding=True, return_tensors="np")
    assert tf_batch["input_ids"].dtype == tf.int32 and tf_batch["attention_mask"].dtype == tf.int32
    assert np_batch["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(tf_batch["input_ids"].numpy(), np_batch["input_ids"])


def test_single_text_gives_flat_lists_or_a_batch_of_one(tok_v1):
    assert tok_v1("Hi")["input_ids"] == [1, 15359]
    assert tok_v1("Hi", return_tensors="tf")["input_ids"].shape == (1, 2)


def test_unequal_lengths_need_padding_for_tensors(tok_v1):
    with pytest.raises(ValueError, match="padding=True"):
        tok_v1(["a", "b c d"], return_tensors="tf")


# ---- loading ------------------------------------------------------------------------------------


def test_from_pretrained_reads_a_checkpoint_folder_or_a_model_file(tmp_path, tok_v1):
    (tmp_path / "tokenizer.model").write_bytes(tok_v1.model_proto)
    assert MistralTokenizer.from_pretrained(tmp_path).encode("Hi") == tok_v1.encode("Hi")
    assert MistralTokenizer.from_pretrained(tmp_path / "tokenizer.model").vocab_size == 32000


def test_from_pretrained_without_path_is_the_embedded_v1_tokenizer():
    tok = MistralTokenizer.from_pretrained()
    assert (tok.vocab_size, tok.chat_format) == (32000, "v1")


def test_default_v3_has_32768_pieces_and_inst_control_ids():
    v3 = MistralTokenizer.default("v3")
    assert (v3.vocab_size, v3.chat_format) == (32768, "v3")
    assert (v3.special_tokens["[INST]"], v3.special_tokens["[/INST]"]) == (3, 4)


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
        MistralTokenizer.from_pretrained(tmp_path)


# ---- the tokenizer that goes with a model --------------------------------------------------------

TINY_MODEL_FILE = pathlib.Path(fixture_path("tiny_tokenizer")) / "tokenizer.model"  # 1000 pieces
MISTRAL_V01_FILE = pathlib.Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"  # 32000


def test_load_tokenizer_takes_the_checkpoints_tokenizer_model(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(TINY_MODEL_FILE.read_bytes())
    assert load_tokenizer(checkpoint=tmp_path, vocab_size=1000).model_proto == TINY_MODEL_FILE.read_bytes()


def test_load_tokenizer_falls_back_to_mistral_v01_when_the_checkpoint_has_none(tmp_path):
    assert load_tokenizer(checkpoint=tmp_path).model_proto == MISTRAL_V01_FILE.read_bytes()


def test_load_tokenizer_prefers_the_tokenizer_given_to_the_checkpoints(tmp_path, tok_v1):
    (tmp_path / "tokenizer.model").write_bytes(TINY_MODEL_FILE.read_bytes())
    assert load_tokenizer(tok_v1, checkpoint=tmp_path) is tok_v1
    assert load_tokenizer(MISTRAL_V01_FILE, checkpoint=tmp_path).model_proto == MISTRAL_V01_FILE.read_bytes()


def test_load_tokenizer_refuses_more_pieces_than_the_model_has_ids_naming_the_tokenizer(tmp_path):
    message = (f"the model's vocabulary has 1000 ids but the tokenizer (the default Mistral v0.1: {tmp_path} has no "
               f"tokenizer.model) has 32000 pieces: put the model's tokenizer.model in {tmp_path}")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_tokenizer(checkpoint=tmp_path, vocab_size=1000)


def test_config_round_trip_keeps_settings(tok_v1):
    tok = MistralTokenizer.from_config(MistralTokenizer(tok_v1.model_proto, add_eos=True, pad_token_id=2).get_config())
    assert (tok.add_eos, tok.pad_token_id, tok.encode("Hi")) == (True, 2, [1, 15359, 2])


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, error, message", [
    (["ok", None], TypeError, "text 1 is NoneType"),
    (["ok", "fine", 3], TypeError, "text 2 is int"),
    ([b"ok", b"\xff\xfe"], ValueError, "text 1 is bytes that are not valid UTF-8"),
    (["\ud800"], ValueError, "text 0 cannot be encoded as UTF-8"),
])
def test_bad_text_names_the_offending_item(tok_v1, bad, error, message):
    with pytest.raises(error, match=message):
        tok_v1(bad)


def test_utf8_bytes_are_accepted_as_text(tok_v1):
    assert tok_v1([b"caf\xc3\xa9"])["input_ids"] == tok_v1(["café"])["input_ids"]


@pytest.mark.parametrize("ids, error, message", [
    ([[1, 2], [5, 32000]], ValueError, r"sequence 1, position 1: token id 32000 is outside the vocabulary"),
    ([[1, -1]], ValueError, r"sequence 0, position 1: token id -1"),
    ([[1, 2.5]], TypeError, r"sequence 0, position 1: 2.5 is not an integer"),
    ([[1, None]], TypeError, r"sequence 0, position 1: None is not an integer"),
    (np.array([[1.0, 2.0]]), TypeError, "dtype float64"),
    ([1, 2], ValueError, "batch_decode takes a batch of sequences"),
])
def test_bad_ids_name_the_offending_position(tok_v1, ids, error, message):
    with pytest.raises(error, match=message):
        tok_v1.batch_decode(ids)


def test_out_of_vocabulary_ids_fail_in_graph(tok_v1):
    with pytest.raises(tf.errors.InvalidArgumentError, match="vocabulary"):
        tok_v1.detokenize(tf.constant([[1, 40000]]))


# ---- graphs, tf.data, SavedModel ----------------------------------------------------------------


def test_tokenize_and_detokenize_run_inside_tf_function(tok_v1):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def round_trip(texts):
        return tok_v1.detokenize(tok_v1.tokenize(texts), skip_special_tokens=True)

    assert [t.decode() for t in round_trip(tf.constant(HARD_TEXTS)).numpy()] == HARD_TEXTS


def test_tokenize_runs_in_tf_data(tok, sp):
    dataset = tf.data.Dataset.from_tensor_slices(HARD_TEXTS).map(tok.tokenize)
    assert [ids.numpy().tolist() for ids in dataset] == sp.encode(HARD_TEXTS, add_bos=True)


def test_saved_model_runs_with_only_tensorflow_and_tensorflow_text(tmp_path, tok_v1):
    module = tf.Module()
    module.tokenizer = tok_v1
    module.encode = tf.function(lambda texts: tok_v1.tokenize(texts).to_tensor(),
                                input_signature=[tf.TensorSpec([None], tf.string)])
    module.decode = tf.function(lambda ids: tok_v1.detokenize(ids, skip_special_tokens=True),
                                input_signature=[tf.TensorSpec([None, None], tf.int32)])
    tf.saved_model.save(module, str(tmp_path))
    script = (
        "import sys, tensorflow as tf, tensorflow_text\n"
        f"m = tf.saved_model.load({str(tmp_path)!r})\n"
        "ids = m.encode(tf.constant([' Hello  world']))\n"
        "print(ids.numpy().tolist(), m.decode(ids).numpy()[0].decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{[tok_v1.encode(' Hello  world')]}  Hello  world"


# ---- MistralPreprocessor ------------------------------------------------------------------------


def test_preprocessor_maps_a_dataset_to_fixed_length_inputs(tok_v1):
    preprocessor = MistralPreprocessor(tok_v1, sequence_length=8)
    dataset = tf.data.Dataset.from_tensor_slices(["Hello world", "Hi"]).batch(2).map(preprocessor)
    assert dataset.element_spec["input_ids"].shape.as_list() == [None, 8]
    batch = next(iter(dataset))
    assert batch["input_ids"].numpy().tolist()[1] == [1, 15359, 0, 0, 0, 0, 0, 0]
    assert batch["attention_mask"].numpy().tolist()[1] == [1, 1, 0, 0, 0, 0, 0, 0]


def test_preprocessor_labels_padding_with_minus_100_and_adds_eos(tok_v1):
    outputs = MistralPreprocessor(tok_v1, sequence_length=5, add_labels=True)(tf.constant(["Hi"]))
    assert outputs["input_ids"].numpy().tolist() == [[1, 15359, 2, 0, 0]]
    assert outputs["labels"].numpy().tolist() == [[1, 15359, 2, -100, -100]]


def test_preprocessor_truncates_and_pads_on_its_padding_side(tok_v1):
    text = "one two three four five six"
    full = tok_v1.encode(text)
    outputs = MistralPreprocessor(tok_v1, sequence_length=4, padding_side="left")(tf.constant([text, "Hi"]))
    assert outputs["input_ids"].numpy().tolist() == [[1, *full[-3:]], [0, 0, 1, 15359]]


def test_preprocessor_serializes_through_get_config(tok_v1):
    preprocessor = MistralPreprocessor(tok_v1, sequence_length=6, add_labels=True)
    restored = keras.layers.deserialize(keras.layers.serialize(preprocessor))
    texts = tf.constant(["Hello there", "x"])
    for key, value in preprocessor(texts).items():
        np.testing.assert_array_equal(restored(texts)[key], value)


def test_tokenizer_survives_setting_the_global_seed(tok_v1):
    before = tok_v1(["Hello world"])["input_ids"]
    tf.random.set_seed(7)  # clears TF's eager kernel cache, which owns the SentencePiece resource
    assert tok_v1(["Hello world"])["input_ids"] == before
    assert tok_v1.decode(before[0], skip_special_tokens=True) == "Hello world"
