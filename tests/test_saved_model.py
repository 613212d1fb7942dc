"""SavedModel export for TF Serving: layout, signatures, ops, parity with Keras / HF, bad requests.

The tiny fixtures are exported once per module, with tests/fixtures/tiny_tokenizer (1000 pieces,
the size of the tiny models' vocabulary).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import fixture_path
from tf_mistral.export import saved_model, saved_model_versions, serving_rest
from tf_mistral.generation import buckets
from tf_mistral.tokenizer import MistralTokenizer

MAX_LENGTH, MAX_NEW_TOKENS = 128, 64
TOKENIZER = fixture_path("tiny_tokenizer")
PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog. Mistral is a large language model."]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "An assistant."}, {"role": "user", "content": "Hello"}]

# Every op the exported graphs may hold: TensorFlow core and TF Text (Sentencepiece*), no XLA.
# XlaDynamicUpdateSlice (keras.ops.slice_update on TensorFlow) has a CPU kernel in TF only through
# XLA's compile-on-demand, so it is excluded: the exporter traces a step's cache write as a scatter.
ALLOWED_OPS = {
    "Add", "AddV2", "All", "Any", "ArgMax", "Assert", "AssignVariableOp", "BatchMatMulV2", "BroadcastTo", "Cast",
    "ConcatV2", "Const", "Cos", "Cumsum", "DenseBincount", "DisableCopyOnRead", "DynamicStitch", "Equal",
    "ExpandDims", "Fill", "FloorDiv", "FloorMod", "GatherV2", "Greater", "GreaterEqual", "Identity", "IdentityN",
    "If", "Less", "LessEqual", "Log", "LogicalAnd", "LogicalNot", "LogicalOr", "MatMul", "Max", "Maximum", "Mean",
    "MergeV2Checkpoints", "Min", "Minimum", "Mul", "Neg", "NoOp", "NotEqual", "Pack", "Pad", "PartitionedCall",
    "Placeholder", "Pow", "Prod", "RaggedGather", "RaggedRange", "RaggedTensorToTensor", "Range", "ReadVariableOp",
    "RealDiv", "Reshape", "RestoreV2", "Rsqrt", "SaveV2", "Select", "SelectV2", "Shape", "ShardedFilename",
    "Sigmoid", "Sin", "Size", "Slice", "Softmax", "Sort", "Square", "Squeeze", "StatefulPartitionedCall",
    "StatelessIf", "StatelessRandomGetKeyCounter", "StatelessRandomUniformV2", "StaticRegexFullMatch",
    "StridedSlice", "StringJoin", "StringLength", "Sub", "Substr", "Sum", "TensorScatterUpdate", "Tile", "TopKV2",
    "Transpose", "UnicodeTranscode", "UnsortedSegmentJoin", "UnsortedSegmentMax", "UnsortedSegmentMin",
    "UnsortedSegmentSum", "VarHandleOp", "Where", "While",
    # TF Text
    "SentencepieceOp", "SentencepieceTokenizeOp", "SentencepieceDetokenizeOp",
}


@pytest.fixture(scope="module")
def serving_base(tmp_path_factory):
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def exported(serving_base):
    """The tiny_window causal LM exported once (float32, no XLA)."""
    return saved_model.export_saved_model(
        fixture_path("tiny_window"), serving_base / "tiny", max_length=MAX_LENGTH, max_new_tokens=MAX_NEW_TOKENS,
        dtype="float32", tokenizer=TOKENIZER, progress=False,
    )


@pytest.fixture(scope="module")
def exported_classifier(serving_base):
    return saved_model.export_saved_model(
        fixture_path("tiny_seqcls"), serving_base / "classifier", max_length=MAX_LENGTH, dtype="float32",
        tokenizer=TOKENIZER, progress=False,
    )


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported["path"])


@pytest.fixture(scope="module")
def tokenizer():
    return MistralTokenizer.from_pretrained(TOKENIZER)


def knobs(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, top_p=1.0, top_k=0, seed=0):
    return dict(max_new_tokens=tf.constant(max_new_tokens), temperature=tf.constant(float(temperature)),
                top_p=tf.constant(float(top_p)), top_k=tf.constant(top_k), seed=tf.constant(seed))


def keras_new_tokens(model, input_ids, attention_mask=None, **kwargs):
    """Keras `generate`'s new tokens, one list per row, cut after </s>."""
    input_ids = np.asarray(input_ids)
    output = model.generate(input_ids, attention_mask=attention_mask, **kwargs)[:, input_ids.shape[1]:]
    return [row[: list(row).index(2) + 1] if 2 in row else row for row in output.tolist()]


def served_tokens(outputs):
    return [row[:n].tolist() for row, n in zip(outputs["token_ids"].numpy(), outputs["num_tokens"].numpy())]


# ---- layout -------------------------------------------------------------------------------------


def test_export_writes_tf_serving_layout_base_name_version(exported, serving_base):
    assert exported["path"] == os.path.join(serving_base / "tiny", "1")
    assert sorted(os.listdir(serving_base / "tiny")) == ["1"]  # no temporary folder left behind
    assert {"saved_model.pb", "variables"} <= set(os.listdir(exported["path"]))


def test_next_free_version_follows_the_highest_number(tmp_path):
    for name in ("1", "3", "notes", ".tmp-9-x"):
        (tmp_path / name).mkdir()
    assert saved_model_versions.resolve_version(str(tmp_path), None, overwrite=False) == 4
    assert saved_model_versions.resolve_version(str(tmp_path / "absent"), None, overwrite=False) == 1


def test_existing_version_is_not_overwritten_unless_asked(exported, serving_base):
    with pytest.raises(FileExistsError, match="already exists"):
        saved_model.export_saved_model(fixture_path("tiny_window"), serving_base / "tiny", version=1, progress=False)
    assert saved_model_versions.resolve_version(str(serving_base / "tiny"), 1, overwrite=True) == 1


def test_publish_replaces_a_version_by_rename(tmp_path):
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "old").write_text("old")
    staging = tmp_path / ".tmp-2-abc"
    staging.mkdir()
    (staging / "new").write_text("new")
    saved_model_versions.publish(str(staging), str(tmp_path), 2)
    assert sorted(os.listdir(tmp_path)) == ["2"] and os.listdir(tmp_path / "2") == ["new"]


def test_failed_export_leaves_no_version_and_no_temporary_folder(tmp_path, monkeypatch):
    from tf_mistral.export import serving_signatures

    def fail(self):
        raise RuntimeError("tracing failed")

    monkeypatch.setattr(serving_signatures.GenerationSignatures, "signatures", fail)
    with pytest.raises(RuntimeError, match="tracing failed"):
        saved_model.export_saved_model(fixture_path("tiny_window"), tmp_path / "m", max_length=32, max_new_tokens=8,
                                       tokenizer=TOKENIZER, progress=False)
    assert os.listdir(tmp_path / "m") == []


# An export that dies after writing part of its model into its staging folder, before publishing.
KILLED_EXPORT = """
import os, sys
from tf_mistral.export import saved_model_versions
staging = saved_model_versions.staging_folder(sys.argv[1], 1)
open(os.path.join(staging, "saved_model.pb"), "w").write("partial")
"""


def test_the_next_export_removes_the_folders_a_killed_export_left(tmp_path, monkeypatch):
    base = tmp_path / "m"
    base.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(base)])
    assert killed.wait() == 0
    (base / f".old-2-{killed.pid}-k1ll3d00" / "model").mkdir(parents=True)  # killed between publish's renames
    assert len(os.listdir(base)) == 2

    def stop(checkpoint, dtype):
        raise RuntimeError("stopped after the clean-up")

    monkeypatch.setattr(saved_model, "_load_model", stop)
    with pytest.raises(RuntimeError, match="stopped after the clean-up"):
        saved_model.export_saved_model(fixture_path("tiny_window"), base, progress=False)
    assert os.listdir(base) == []


def test_a_running_exports_staging_folder_is_kept(tmp_path):
    staging = saved_model_versions.staging_folder(str(tmp_path), 3)  # this process's: still running
    assert saved_model_versions.remove_dead_exports(str(tmp_path)) == []
    assert os.path.isdir(staging)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(max_length=1024), ValueError, "max_position_embeddings"),
        (dict(max_length=32, max_new_tokens=32), ValueError, "below max_length"),
        (dict(dtype="int8"), ValueError, "dtype"),
        (dict(tokenizer=None), ValueError, "the model's vocabulary has 1000 ids but the tokenizer .* has 32000 pieces"),
    ],
)
def test_bad_export_arguments_say_what_to_change(tmp_path, kwargs, error, message):
    kwargs = {"tokenizer": TOKENIZER, "max_length": 64, "max_new_tokens": 8, **kwargs}
    with pytest.raises(error, match=message):
        saved_model.export_saved_model(fixture_path("tiny_window"), tmp_path / "m", progress=False, **kwargs)


def test_export_reports_its_stages(exported):
    stages = [stage for stage, _, _ in exported["stages"]]
    assert [stage.split()[0] for stage in stages] == ["loading", "tracing", "writing", "publishing", "done:"]


# ---- graph --------------------------------------------------------------------------------------


def test_graph_has_only_tensorflow_core_and_tf_text_ops(exported, exported_classifier):
    ops = saved_model.saved_model_ops(exported["path"]) | saved_model.saved_model_ops(exported_classifier["path"])
    assert not saved_model.xla_ops(ops)
    assert ops <= ALLOWED_OPS, sorted(ops - ALLOWED_OPS)


def test_saved_model_cli_lists_the_signatures(exported):
    command = [
        os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--dir", exported["path"], "--all"
    ]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    for name in ("serving_default", "generate_text", "chat", "generate"):
        assert f"signature_def['{name}']" in shown
    for tensor in ("prompts", "completions", "roles", "contents", "reply", "input_ids", "attention_mask",
                   "token_ids", "num_tokens", "max_new_tokens", "temperature", "top_p", "top_k", "seed"):
        assert f"['{tensor}']" in shown


def test_saved_model_cli_runs_the_text_signature(exported, causal_lm, tokenizer):
    # saved_model_cli does not load TF Text's ops itself: run it with tensorflow_text imported.
    script = "import sys, tensorflow_text; from tensorflow.python.tools.saved_model_cli import main; sys.exit(main())"
    command = [sys.executable, "-c", script, "run", "--dir", exported["path"], "--tag_set", "serve",
               "--signature_def", "serving_default", "--input_exprs", f"prompts={PROMPTS[:1]!r}"]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    expected = keras_new_tokens(causal_lm("tiny_window"), tokenizer(PROMPTS[:1], return_tensors="np")["input_ids"],
                                max_new_tokens=MAX_NEW_TOKENS)[0]
    printed = shown.split("Result for output key token_ids:")[1]
    assert [int(t) for t in printed.replace("[", " ").replace("]", " ").split()] == expected


# ---- parity -------------------------------------------------------------------------------------


def test_fresh_process_with_only_tensorflow_and_tf_text_gives_keras_greedy_tokens(
    exported, causal_lm, tokenizer, tmp_path
):
    script = (
        "import json, sys, tensorflow as tf, tensorflow_text\n"
        f"model = tf.saved_model.load({exported['path']!r})\n"
        f"out = model.signatures['serving_default'](prompts=tf.constant({PROMPTS!r}))\n"
        "assert not [m for m in sys.modules if m.startswith('tf_mistral')]\n"
        "rows = zip(out['token_ids'].numpy().tolist(), out['num_tokens'].numpy().tolist())\n"
        "print(json.dumps([ids[:n] for ids, n in rows]))\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    batch = tokenizer(PROMPTS, return_tensors="np", padding=True)
    expected = keras_new_tokens(causal_lm("tiny_window"), batch["input_ids"], batch["attention_mask"],
                                max_new_tokens=MAX_NEW_TOKENS)
    assert json.loads(shown.strip().splitlines()[-1]) == expected


def test_completions_are_the_decoded_tokens(loaded, tokenizer):
    out = loaded.signatures["serving_default"](prompts=tf.constant(PROMPTS))
    decoded = tokenizer.batch_decode([ids for ids in served_tokens(out)], skip_special_tokens=True)
    assert [text.decode() for text in out["completions"].numpy()] == decoded


@pytest.mark.parametrize("case", ["long_prompt", "short_prompt", "batch"])
def test_generate_signature_equals_hf_greedy_generations(loaded, reference, case):
    ref = reference("tiny_window")
    if case == "batch":
        ids, mask, output = ref["gen_batch_input_ids"], ref["gen_batch_attention_mask"], ref["gen_batch_output"]
    else:
        ids, output = ref[f"gen_{case}_input"], ref[f"gen_{case}"]
        mask = np.ones_like(ids)
    new = output.shape[1] - ids.shape[1]
    out = loaded.signatures["generate"](input_ids=tf.constant(ids, tf.int32),
                                        attention_mask=tf.constant(mask, tf.int32),
                                        **knobs(max_new_tokens=new))
    np.testing.assert_array_equal(out["token_ids"].numpy(), output[:, ids.shape[1]:])


def test_right_padded_ids_give_the_same_tokens_as_left_padded(loaded, reference):
    ref = reference("tiny_window")
    ids, mask = ref["gen_batch_input_ids"], ref["gen_batch_attention_mask"]
    right_ids, right_mask = np.zeros_like(ids), np.zeros_like(mask)
    for row, (tokens, keep) in enumerate(zip(ids, mask.astype(bool))):
        right_ids[row, :keep.sum()], right_mask[row, :keep.sum()] = tokens[keep], 1
    right_ids[right_mask == 0] = 7  # padding ids are ignored whatever they are
    left = loaded.signatures["generate"](
        input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **knobs(max_new_tokens=10)
    )
    right = loaded.signatures["generate"](
        input_ids=tf.constant(right_ids), attention_mask=tf.constant(right_mask), **knobs(max_new_tokens=10)
    )
    np.testing.assert_array_equal(left["token_ids"].numpy(), right["token_ids"].numpy())


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(loaded):
    def sample(**settings):
        out = loaded.signatures["generate_text"](prompts=tf.constant(PROMPTS), **knobs(max_new_tokens=12, **settings))
        return served_tokens(out)

    settings = dict(temperature=0.8, top_p=0.9, top_k=20, seed=7)
    assert sample(**settings) == sample(**settings)
    assert sample(**settings) != sample(**dict(settings, seed=8))
    assert sample(temperature=1.5, top_k=1, seed=3) == sample(temperature=0.0)
    assert sample(temperature=1.5, top_p=1e-6, seed=3) == sample(temperature=0.0)


def test_chat_reply_equals_keras_generate_on_the_chat_template(loaded, causal_lm, tokenizer):
    roles = [[m["role"] for m in CHAT], ["user", "", "", ""]]  # role "" pads the shorter conversation
    contents = [[m["content"] for m in CHAT], ["Hi", "", "", ""]]
    out = loaded.signatures["chat"](
        roles=tf.constant(roles), contents=tf.constant(contents), **knobs(max_new_tokens=16)
    )
    ids = tokenizer.apply_chat_template(
        [CHAT, [{"role": "user", "content": "Hi"}]], return_tensors="np", return_dict=True
    )
    expected = keras_new_tokens(causal_lm("tiny_window"), ids["input_ids"], ids["attention_mask"], max_new_tokens=16)
    assert served_tokens(out) == expected
    assert [reply.decode() for reply in out["reply"].numpy()] == tokenizer.batch_decode(
        expected, skip_special_tokens=True
    )


def test_classify_equals_the_keras_classifier(exported_classifier, tokenizer):
    from tf_mistral import TFMistralForSequenceClassification

    loaded_classifier = tf.saved_model.load(exported_classifier["path"])
    assert set(loaded_classifier.signatures) == {"serving_default", "classify"}
    texts = ["I love it", "This is terrible and long, very long indeed", ""]
    out = loaded_classifier.signatures["classify"](texts=tf.constant(texts))
    model = TFMistralForSequenceClassification.from_pretrained(
        fixture_path("tiny_seqcls"), dtype="float32", progress=False
    )
    batch = tokenizer(texts, return_tensors="np", padding=True, padding_side="right")
    logits = np.asarray(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
    np.testing.assert_allclose(out["logits"].numpy(), logits, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-6)
    names = ["negative", "neutral", "positive"]
    assert [label.decode() for label in out["labels"].numpy()] == [names[i] for i in logits.argmax(-1)]


def test_buckets_in_the_graph_equal_the_buckets_of_python_ints():
    lengths = range(1, 300)
    assert buckets.prompt_bucket(tf.range(1, 300)).numpy().tolist() == [buckets.prompt_bucket(n) for n in lengths]
    for window, max_length in ((None, 256), (40, 256), (None, None)):
        in_graph = buckets.cache_length(tf.range(1, 300), window, max_length).numpy().tolist()
        assert in_graph == [buckets.cache_length(n, window, max_length) for n in lengths]


def test_a_request_has_the_smallest_cache_bucket_for_its_positions_within_window_and_export():
    assert [buckets.cache_length(n, 40, 128) for n in (1, 16, 17, 33, 41, 500)] == [16, 16, 32, 40, 40, 40]
    assert [buckets.cache_length(n, None, 100) for n in (16, 65, 100)] == [16, 100, 100]
    assert buckets.cache_length(1000, None) == 1024


@pytest.fixture(scope="module")
def window_40():
    """tiny_window with a 40-token window: cache buckets 16 and 32 below it."""
    from tf_mistral import TFMistralForCausalLM

    return TFMistralForCausalLM.from_pretrained(fixture_path("tiny_window"), dtype="float32", sliding_window=40,
                                                progress=False)


# (prompt tokens, new tokens): positions in the 16 bucket; a prompt in the 16 bucket whose reply
# crosses into 32; a reply crossing the 40-token window (a ring buffer); a prompt longer than the
# window (chunked prefill) and a reply far past it.
REQUESTS = [(5, 8), (12, 12), (20, 30), (60, 40)]


def test_short_and_long_requests_to_one_export_equal_keras_generate(window_40, tmp_path):
    result = saved_model.export_saved_model(window_40, tmp_path / "m", max_length=MAX_LENGTH,
                                            max_new_tokens=MAX_NEW_TOKENS, tokenizer=TOKENIZER, progress=False)
    generate = tf.saved_model.load(result["path"]).signatures["generate"]
    rng = np.random.default_rng(3)
    for prompt, new in REQUESTS:
        for batch in (1, 2):
            ids = rng.integers(3, 1000, (batch, prompt)).astype(np.int32)
            mask = np.ones_like(ids)
            mask[1:, :3] = 0  # the second row is shorter (left-padded)
            out = generate(input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **knobs(max_new_tokens=new))
            expected = keras_new_tokens(window_40, ids, mask, max_new_tokens=new)
            assert served_tokens(out) == expected, (prompt, new, batch)
            assert max(len(row) for row in expected) == new  # no early </s>: every bucket was reached


# ---- bad requests -------------------------------------------------------------------------------


def test_empty_prompt_generates_from_bos_alone(loaded, causal_lm):
    out = loaded.signatures["generate_text"](prompts=tf.constant([""]), **knobs(max_new_tokens=8))
    assert served_tokens(out) == keras_new_tokens(causal_lm("tiny_window"), [[1]], max_new_tokens=8)


def test_empty_batch_gets_empty_outputs(loaded, exported_classifier):
    out = loaded.signatures["serving_default"](prompts=tf.constant([], tf.string))
    assert out["completions"].shape == [0] and out["token_ids"].shape[0] == 0
    classified = tf.saved_model.load(exported_classifier["path"]).signatures["classify"](
        texts=tf.constant([], tf.string)
    )
    assert classified["labels"].shape == [0] and classified["logits"].shape == [0, 3]


def test_over_long_prompt_is_left_truncated_keeping_bos(loaded, causal_lm, tokenizer):
    long_prompt = " ".join(PROMPTS * 20)
    ids = tokenizer([long_prompt], return_tensors="np")["input_ids"]
    assert ids.shape[1] > MAX_LENGTH
    new = 10
    kept = np.concatenate([[[1]], ids[:, -(MAX_LENGTH - new - 1):]], axis=1)
    out = loaded.signatures["generate_text"](prompts=tf.constant([long_prompt]), **knobs(max_new_tokens=new))
    assert served_tokens(out) == keras_new_tokens(causal_lm("tiny_window"), kept, max_new_tokens=new)


def test_huge_max_new_tokens_is_clamped_to_the_export_limit(loaded):
    out = loaded.signatures["generate_text"](prompts=tf.constant(PROMPTS[:1]), **knobs(max_new_tokens=10**9))
    assert out["token_ids"].shape[1] <= MAX_NEW_TOKENS and out["num_tokens"].numpy()[0] <= MAX_NEW_TOKENS


def test_non_utf8_bytes_read_as_replacement_characters(loaded):
    bad = loaded.signatures["generate_text"](prompts=tf.constant([b"caf\xe9 \xff ok"]), **knobs(max_new_tokens=8))
    replaced = loaded.signatures["generate_text"](
        prompts=tf.constant(["caf\ufffd \ufffd ok"]), **knobs(max_new_tokens=8)
    )
    assert served_tokens(bad) == served_tokens(replaced)
    bad["completions"].numpy()[0].decode("utf-8")  # outputs are valid UTF-8


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(max_new_tokens=-5), "max_new_tokens must be >= 1"),
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be >= 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be >= 0"),
    ],
)
def test_bad_knobs_are_invalid_argument_errors(loaded, settings, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["generate_text"](prompts=tf.constant(PROMPTS[:1]), **knobs(**settings))


@pytest.mark.parametrize(
    "ids, mask, message",
    [
        ([[5, 1000]], [[1, 1]], r"input_ids must be in \[0, 1000\)"),
        ([[5, -3]], [[1, 1]], r"input_ids must be in \[0, 1000\)"),
        ([[5, 6], [7, 8]], [[1, 1], [0, 0]], "every row needs at least one token"),
        ([[5, 6]], [[1, 1, 1]], "input_ids and attention_mask must have the same shape"),
    ],
)
def test_bad_token_ids_are_invalid_argument_errors(loaded, ids, mask, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["generate"](
            input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **knobs(max_new_tokens=4)
        )


def test_invalid_conversation_is_an_invalid_argument_error(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError, match="chat roles must be system, user or assistant"):
        loaded.signatures["chat"](
            roles=tf.constant([["robot"]]), contents=tf.constant([["hi"]]), **knobs(max_new_tokens=4)
        )


def test_rest_requests_in_both_forms_get_tf_serving_replies(loaded):
    rows = serving_rest.predict(loaded, {"instances": PROMPTS})
    columns = serving_rest.predict(loaded, {"signature_name": "generate_text", "inputs": {
        "prompts": PROMPTS, "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 0}})
    assert [row["completions"] for row in rows["predictions"]] == columns["outputs"]["completions"]
    assert set(rows["predictions"][0]) == {"completions", "num_tokens", "token_ids"}
    error = serving_rest.predict(loaded, {"signature_name": "generate_text", "inputs": {
        "prompts": PROMPTS, "max_new_tokens": -1, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 0}})
    assert "max_new_tokens must be >= 1" in error["error"]


# ---- dtype and XLA ------------------------------------------------------------------------------


@pytest.mark.slow
def test_bfloat16_export_stores_bfloat16_weights(tmp_path):
    result = saved_model.export_saved_model(fixture_path("tiny_window"), tmp_path / "bf16", max_length=64,
                                            max_new_tokens=8, dtype="bfloat16", tokenizer=TOKENIZER, progress=False)
    reader = tf.train.load_checkpoint(os.path.join(result["path"], "variables", "variables"))
    dtypes = {name: dtype for name, dtype in reader.get_variable_to_dtype_map().items() if "VARIABLE_VALUE" in name}
    assert len(dtypes) == 2 * 9 + 3 and set(dtypes.values()) == {tf.bfloat16}
    out = tf.saved_model.load(result["path"]).signatures["serving_default"](prompts=tf.constant(PROMPTS))
    assert out["token_ids"].shape[0] == 2 and out["token_ids"].shape[1] <= 8


@pytest.mark.slow
def test_xla_export_gives_the_same_greedy_tokens_and_keras_samples(tmp_path, loaded, causal_lm, tokenizer):
    result = saved_model.export_saved_model(fixture_path("tiny_window"), tmp_path / "xla", max_length=MAX_LENGTH,
                                            max_new_tokens=MAX_NEW_TOKENS, dtype="float32", xla=True,
                                            tokenizer=TOKENIZER, progress=False)
    assert saved_model.xla_ops(set(result["ops"])) == ["XlaDynamicUpdateSlice"]
    xla_model = tf.saved_model.load(result["path"])
    prompts = tf.constant(PROMPTS + [" ".join(PROMPTS * 20)])  # the last one is longer than the window
    np.testing.assert_array_equal(xla_model.signatures["serving_default"](prompts=prompts)["token_ids"].numpy(),
                                  loaded.signatures["serving_default"](prompts=prompts)["token_ids"].numpy())
    # XLA draws the random numbers `generate` draws (TF's non-XLA RNG kernels draw others).
    settings = dict(temperature=0.8, top_p=0.9, top_k=20, seed=7)
    out = xla_model.signatures["generate_text"](prompts=tf.constant(PROMPTS), **knobs(max_new_tokens=12, **settings))
    batch = tokenizer(PROMPTS, return_tensors="np", padding=True)
    assert served_tokens(out) == keras_new_tokens(causal_lm("tiny_window"), batch["input_ids"], batch["attention_mask"],
                                                  max_new_tokens=12, do_sample=True, **settings)
