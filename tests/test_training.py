"""Fine-tuning with Keras `fit`: the default losses against HF's definition, the heads, dtype
policies, gradient accumulation, rematerialization, learning a text, and the trip back to HF.

References: the causal LM loss is HF's (`MistralForCausalLM(labels=...)`: shift, -100 ignored,
mean over labelled tokens), computed here in numpy from the HF logits stored in the fixtures (and,
with torch, by HF itself). Training tests use fresh models: `fit` changes weights.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import fixture_path
from tf_mistral import (
    MistralConfig,
    TFMistralForCausalLM,
    TFMistralForSequenceClassification,
    TFMistralForTokenClassification,
)
from tf_mistral.training import causal_lm_dataset, causal_lm_loss, rematerialize

WINDOW = fixture_path("tiny_window")


def fresh(cls=TFMistralForCausalLM, name="tiny_window", **kwargs):
    return cls.from_pretrained(fixture_path(name), progress=False, **kwargs)


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def hf_causal_lm_loss(logits, labels):
    """HF's definition: logits[:, :-1] predict labels[:, 1:]; -100 ignored; mean over the rest."""
    logp, target = log_softmax(logits)[:, :-1], labels[:, 1:]
    valid = target != -100
    picked = np.take_along_axis(logp, np.where(valid, target, 0)[..., None], -1)[..., 0]
    return -picked[valid].mean()


def random_ids(shape, seed=0):
    return np.random.default_rng(seed).integers(3, 1000, shape).astype(np.int32)


@pytest.fixture(scope="module")
def labelled(reference):
    """The fixture's HF inputs with some labels set to -100, and HF's loss on them."""
    ref = reference("tiny_window")
    labels = ref["input_ids"].astype(np.int32).copy()
    labels[0, 5:17] = -100
    labels[1, :9] = -100
    return ref["input_ids"], labels, hf_causal_lm_loss(ref["logits"], labels)


# ----------------------------------------------------------------------------------------------
# The causal LM loss and metrics


def test_default_loss_is_hfs_shifted_cross_entropy_ignoring_minus_100(labelled):
    ids, labels, expected = labelled
    model = fresh()
    model.compile()
    result = model.evaluate({"input_ids": ids, "labels": labels}, batch_size=2, verbose=0, return_dict=True)
    assert abs(result["loss"] - expected) < 1e-4
    assert abs(result["perplexity"] - np.exp(expected)) < 1e-3 * np.exp(expected)


def test_labels_may_come_as_y_or_inside_x(labelled):
    ids, labels, expected = labelled
    model = fresh()
    model.compile()
    as_y = model.evaluate({"input_ids": ids}, labels, batch_size=2, verbose=0, return_dict=True)
    assert abs(as_y["loss"] - expected) < 1e-4


def test_without_labels_the_inputs_are_learned_and_padding_ignored():
    ids = random_ids((2, 24))
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    model = fresh()
    model.compile()
    implicit = model.evaluate({"input_ids": ids, "attention_mask": mask}, verbose=0, return_dict=True)["loss"]
    explicit = model.evaluate({"input_ids": ids, "attention_mask": mask, "labels": np.where(mask > 0, ids, -100)},
                              verbose=0, return_dict=True)["loss"]
    other_padding = np.where(mask > 0, ids, 7)
    repadded = model.evaluate({"input_ids": other_padding, "attention_mask": mask}, verbose=0, return_dict=True)["loss"]
    logits = model({"input_ids": ids, "attention_mask": mask}).logits
    assert abs(implicit - hf_causal_lm_loss(logits, np.where(mask > 0, ids, -100))) < 1e-5
    assert implicit == pytest.approx(explicit, abs=1e-6)
    assert implicit == pytest.approx(repadded, abs=1e-6)


def test_loss_is_float32_under_mixed_precision(labelled):
    ids, labels, expected = labelled
    model = fresh(dtype="mixed_bfloat16")
    model.compile()
    x = {"input_ids": ids, "labels": labels}
    output = model(x)
    assert output.logits.dtype == tf.bfloat16
    loss = model.compute_loss(x=x, y_pred=output)
    assert loss.dtype == tf.float32
    assert abs(float(loss) - expected) < 0.05  # bf16 logits are ~0.3 off; the loss much less


def test_token_accuracy_counts_labelled_next_tokens():
    model = fresh()
    model.compile()
    ids = random_ids((2, 16))
    logits = model(ids).logits.numpy()
    labels = ids.copy()
    labels[0, :8] = -100
    predicted, target = logits[:, :-1].argmax(-1), labels[:, 1:]
    expected = (predicted == target)[target != -100].mean()
    result = model.evaluate({"input_ids": ids, "labels": labels}, verbose=0, return_dict=True)
    assert result["accuracy"] == pytest.approx(expected)


def test_a_compiled_loss_replaces_the_default():
    model = fresh()
    model.compile(loss=lambda labels, logits: tf.reduce_mean(tf.cast(logits, tf.float32)) * 0 + 3.0)
    result = model.evaluate({"input_ids": random_ids((2, 8))}, random_ids((2, 8)), verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(3.0)
    assert "perplexity" not in result


# ----------------------------------------------------------------------------------------------
# Classification heads


def test_sequence_classification_trains_on_plain_labels(reference):
    ref = reference("tiny_seqcls")
    x = {"input_ids": ref["input_ids_right"], "attention_mask": ref["attention_mask_right"]}
    labels = np.array([2, 0, 1])
    model = fresh(TFMistralForSequenceClassification, "tiny_seqcls")
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    history = model.fit(x, labels, batch_size=3, epochs=15, verbose=0).history
    assert history["loss"][-1] < 0.3 * history["loss"][0]
    assert history["accuracy"][-1] == 1.0
    assert (model(x).logits.numpy().argmax(-1) == labels).all()


def test_class_weights_weigh_each_example_by_its_class(reference):
    ref = reference("tiny_seqcls")
    x = {"input_ids": ref["input_ids_right"], "attention_mask": ref["attention_mask_right"]}
    labels, weights = np.array([2, 0, 2]), np.array([1.0, 1.0, 4.0])
    model = fresh(TFMistralForSequenceClassification, "tiny_seqcls")
    model.compile(class_weight={2: 4.0})
    nll = -np.take_along_axis(log_softmax(ref["logits_right"]), labels[:, None], -1)[:, 0]
    expected = (weights[labels] * nll).sum() / weights[labels].sum()  # PyTorch's weighted mean
    assert model.evaluate(x, labels, verbose=0, return_dict=True)["loss"] == pytest.approx(expected, abs=1e-4)


def test_class_weight_is_refused_for_the_causal_lm():
    with pytest.raises(ValueError, match="classification heads"):
        fresh().compile(class_weight={0: 2.0})


def test_token_classification_ignores_minus_100(reference):
    ref = reference("tiny_tokcls")
    labels = np.random.default_rng(1).integers(0, 5, ref["input_ids"].shape)
    labels[ref["attention_mask"] == 0] = -100
    labels[0, :3] = -100
    model = fresh(TFMistralForTokenClassification, "tiny_tokcls")
    model.compile()
    x = {"input_ids": ref["input_ids"], "attention_mask": ref["attention_mask"]}
    valid = labels != -100
    logp = log_softmax(ref["logits"])
    expected = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid].mean()
    assert model.evaluate(x, labels, verbose=0, return_dict=True)["loss"] == pytest.approx(expected, abs=1e-4)
    history = model.fit(x, labels, epochs=2, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


def test_classifiers_ask_for_labels():
    model = fresh(TFMistralForSequenceClassification, "tiny_seqcls")
    model.compile()
    with pytest.raises(ValueError, match="needs labels"):
        model.evaluate({"input_ids": random_ids((2, 8))}, verbose=0)


# ----------------------------------------------------------------------------------------------
# Precision, accumulation, rematerialization


def test_mixed_float16_scales_the_loss_and_trains():
    model = fresh(dtype="mixed_float16")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit({"input_ids": random_ids((8, 24))}, batch_size=4, epochs=3, verbose=0).history
    assert all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0] - 1.0
    assert model.lm_head.kernel.dtype == "float32"


def test_bfloat16_weights_with_adam_are_refused_not_silently_frozen():
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        fresh(dtype="bfloat16").compile(optimizer=keras.optimizers.AdamW(1e-3))


def test_gradient_accumulation_equals_one_large_batch():
    x = {"input_ids": random_ids((8, 24))}

    def train(accumulate, batch_size):
        model = fresh()
        model.compile(optimizer=keras.optimizers.SGD(0.5, gradient_accumulation_steps=accumulate))
        model.fit(x, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        return model

    start = fresh().lm_head.kernel.numpy()
    large, accumulated = train(None, 8), train(4, 2)
    moved = np.abs(large.lm_head.kernel.numpy() - start).max()
    assert moved > 1e-3
    for a, b in zip(large.weights, accumulated.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_rematerialized_decoder_gives_the_same_gradients():
    x = {"input_ids": random_ids((2, 24))}

    def gradients(model):
        model.compile()

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = model.compute_loss(x=x, y_pred=model(x))
            return [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_weights)]

        return step()

    # Recomputation reorders float32 sums: 1.2e-6 apart at most on an AMD EPYC (2026-12-03).
    for plain, recomputed in zip(gradients(fresh()), gradients(rematerialize(fresh()))):
        np.testing.assert_allclose(plain.numpy(), recomputed.numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# What fit counts, skips, refuses and stops on


def test_each_batch_of_a_dataset_of_unknown_length_is_one_optimizer_step():
    rows = tf.data.Dataset.from_tensor_slices({"input_ids": random_ids((6, 12))})
    data = rows.filter(lambda row: True).batch(2)  # like packing and bucketing: tf.data cannot count it
    assert data.cardinality() == tf.data.UNKNOWN_CARDINALITY
    model = fresh()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(data, epochs=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2 * 3


def with_batch_without_labels(ids, at):
    """`{"input_ids", "labels"}` of `ids`, with a batch of 2 rows whose labels are all -100 inserted at row `at`."""
    empty = random_ids((2, ids.shape[1]), seed=9)
    return {"input_ids": np.concatenate([ids[:at], empty, ids[at:]]),
            "labels": np.concatenate([ids[:at], np.full_like(empty, -100), ids[at:]])}


def test_a_batch_without_labels_changes_nothing_that_fit_trains_or_reports():
    ids = random_ids((4, 12))

    def train(x):
        model = fresh()
        # weight decay and momentum move weights on a zero gradient
        model.compile(optimizer=keras.optimizers.AdamW(1e-2))
        history = model.fit(x, batch_size=2, shuffle=False, verbose=0).history
        return model, history

    plain, plain_history = train({"input_ids": ids, "labels": ids})
    padded, padded_history = train(with_batch_without_labels(ids, at=2))
    assert int(padded.optimizer.iterations.numpy()) == int(plain.optimizer.iterations.numpy()) == 2
    for a, b in zip(plain.weights + plain.optimizer.variables, padded.weights + padded.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    for name in ("loss", "perplexity", "accuracy", "tokens"):
        np.testing.assert_allclose(padded_history[name], plain_history[name], rtol=1e-6, err_msg=name)
    assert plain_history["tokens"] == [4 * 11]  # 4 rows of 11 predicted tokens


def test_evaluate_leaves_a_batch_without_labels_out_of_the_loss():
    model = fresh()
    model.compile()
    ids = random_ids((4, 12))
    plain = model.evaluate({"input_ids": ids, "labels": ids}, batch_size=2, verbose=0, return_dict=True)
    padded = model.evaluate(with_batch_without_labels(ids, at=2), batch_size=2, verbose=0, return_dict=True)
    assert padded == pytest.approx(plain, rel=1e-6)


def test_nothing_labelled_is_reported_as_nan_not_as_a_perfect_score():
    model = fresh()
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    start = [w.numpy() for w in model.weights]
    ids = random_ids((2, 12))
    history = model.fit({"input_ids": ids, "labels": np.full_like(ids, -100)}, verbose=0).history
    assert np.isnan(history["loss"]).all() and np.isnan(history["perplexity"]).all()
    assert history["tokens"] == [0]
    assert int(model.optimizer.iterations.numpy()) == 0
    assert all((w.numpy() == s).all() for w, s in zip(model.weights, start))
    assert np.isnan(float(causal_lm_loss(np.full_like(ids, -100), model(ids).logits)))


def test_compile_refuses_a_learning_rate_that_is_not_finite():
    with pytest.raises(ValueError, match="the learning rate of AdamW is nan in compile"):
        fresh().compile(optimizer=keras.optimizers.AdamW(float("nan")))
    schedule = keras.optimizers.schedules.ExponentialDecay(float("inf"), decay_steps=10, decay_rate=0.5)
    with pytest.raises(ValueError, match="the learning rate of SGD is inf in compile"):
        fresh().compile(optimizer=keras.optimizers.SGD(schedule))


def test_fit_stops_before_a_batch_whose_learning_rate_is_not_finite():
    model = fresh()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    nan_from_epoch_1 = keras.callbacks.LearningRateScheduler(lambda epoch, rate: float("nan") if epoch else rate)
    with pytest.raises(ValueError, match=r"learning rate of AdamW is nan at epoch 1, batch 0 \(optimizer step 2\)"):
        model.fit({"input_ids": random_ids((4, 12))}, batch_size=2, epochs=2, callbacks=[nan_from_epoch_1], verbose=0)
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)


def test_fit_stops_at_the_batch_whose_loss_is_not_finite():
    model = fresh()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    ids, weights = random_ids((6, 12)), np.ones(6, np.float32)
    weights[3] = np.nan  # in the second batch
    with pytest.raises(FloatingPointError, match=r"the loss is nan at epoch 0, batch 1 \(optimizer step 2\)"):
        model.fit({"input_ids": ids}, ids, sample_weight=weights, batch_size=2, shuffle=False, verbose=0)


def with_value(array, at, value):
    array = array.copy()
    array[at] = value
    return array


@pytest.mark.parametrize("as_dataset", [False, True], ids=["arrays", "dataset"])
def test_fit_names_an_input_id_outside_the_vocabulary(as_dataset):
    x = {"input_ids": with_value(random_ids((6, 12)), (3, 5), 40000)}
    where = "row 3, column 5"
    if as_dataset:
        x, where = tf.data.Dataset.from_tensor_slices(x).batch(2), "batch 1, row 1, column 5"
    model = fresh()
    model.compile()
    with pytest.raises(ValueError, match=f"^input_ids contain 40000 at {where}, but the vocabulary has 1000 ids$"):
        model.fit(x, verbose=0)


def test_fit_names_a_label_outside_the_vocabulary_and_takes_minus_100():
    ids = random_ids((4, 12))
    labels = with_value(np.where(np.arange(12) < 3, -100, ids), (2, 7), -1)
    data = tf.data.Dataset.from_tensor_slices({"input_ids": ids, "labels": labels}).batch(4)
    model = fresh()
    model.compile()
    with pytest.raises(ValueError, match=r"labels contain -1 at batch 0, row 2, column 7, but the vocabulary "
                                         r"has 1000 ids \(labels are ids, or -100 for no loss\)"):
        model.fit(data, verbose=0)


def test_fit_names_a_class_outside_the_classifier_labels_in_validation_data(reference):
    ref = reference("tiny_seqcls")
    x = {"input_ids": ref["input_ids_right"], "attention_mask": ref["attention_mask_right"]}
    model = fresh(TFMistralForSequenceClassification, "tiny_seqcls")
    model.compile()
    with pytest.raises(ValueError, match=r"labels contain 3 at row 1, but the model has 3 labels \(0 to 2, or -100"):
        model.fit(x, np.array([2, 0, 1]), validation_data=(x, np.array([2, 3, -100])), verbose=0)


# ----------------------------------------------------------------------------------------------
# It learns, and HF reads the result


TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill."


@pytest.fixture(scope="module")
def tokenizer():
    from tf_mistral.tokenizer import MistralTokenizer

    return MistralTokenizer.default("v1")


@pytest.mark.slow
def test_fine_tuning_learns_a_text_that_generate_then_reproduces(tokenizer):
    ids = [tokenizer.bos_token_id] + tokenizer.encode(TEXT, add_special_tokens=False) + [tokenizer.eos_token_id]
    config = MistralConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           max_position_embeddings=128, sliding_window=None)
    model = TFMistralForCausalLM(config)
    model.build()
    # Packed rows of exactly one copy of the text each: the data helpers' path.
    data = causal_lm_dataset([TEXT] * 160, tokenizer, sequence_length=len(ids), batch_size=4, seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.0))
    model.fit(data, epochs=1, verbose=0)
    loss = model.evaluate({"input_ids": np.array([ids])}, verbose=0, return_dict=True)["loss"]
    assert loss < 0.05  # from ln(32000) = 10.4
    generated = model.generate(np.array([ids[:4]]), max_new_tokens=len(ids) - 4)
    assert tokenizer.decode(generated[0].tolist(), skip_special_tokens=True) == TEXT


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """A LoRA-fine-tuned mixed_bfloat16 model, written with save_pretrained (merged) and
    save_lora_weights (adapters), and inputs."""
    model = fresh(dtype="mixed_bfloat16")
    model.enable_lora(4, target_modules="all")
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    model.fit({"input_ids": random_ids((8, 24))}, batch_size=4, epochs=2, verbose=0)
    merged, adapters = tmp_path_factory.mktemp("merged"), tmp_path_factory.mktemp("adapters")
    model.save_pretrained(merged, progress=False)
    model.save_lora_weights(adapters)
    return model, merged, adapters, random_ids((2, 20), seed=3)


def test_save_pretrained_merges_lora_in_float32_into_a_plain_checkpoint(fine_tuned):
    model, merged, adapters, ids = fine_tuned
    reloaded = TFMistralForCausalLM.from_pretrained(merged, dtype="float32", progress=False)
    q = model.model.decoder_layers[0].self_attn.q_proj
    delta = q.lora_kernel_a.numpy() @ q.lora_kernel_b.numpy() * (q.lora_alpha / q.lora_rank)
    assert np.abs(delta).max() > 1e-3  # the adapters did train
    kernel = reloaded.model.decoder_layers[0].self_attn.q_proj.kernel.numpy()
    np.testing.assert_allclose(kernel, q._kernel.numpy() + delta, atol=1e-6)  # float32, not Dense.kernel's bf16
    # The float32 base with the adapters on top computes what the merged checkpoint computes.
    adapted = fresh(dtype="float32")
    adapted.load_lora_weights(adapters)
    base_logits, merged_logits = fresh()(ids).logits.numpy(), reloaded(ids).logits.numpy()
    assert np.abs(merged_logits - base_logits).max() > 0.1
    np.testing.assert_allclose(merged_logits, adapted(ids).logits.numpy(), atol=1e-4)


@pytest.mark.torch
def test_transformers_loads_the_fine_tuned_model_with_the_same_logits(fine_tuned):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, merged, _, ids = fine_tuned
    ours = TFMistralForCausalLM.from_pretrained(merged, dtype="float32", progress=False)
    theirs = transformers.MistralForCausalLM.from_pretrained(merged, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = theirs(torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(logits, ours(ids).logits.numpy(), atol=1e-4)


@pytest.mark.torch
def test_loss_equals_transformers_loss(labelled):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ids, labels, _ = labelled
    theirs = transformers.MistralForCausalLM.from_pretrained(WINDOW, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = float(theirs(torch.from_numpy(ids).long(), labels=torch.from_numpy(labels).long()).loss)
    model = fresh()
    model.compile()
    assert model.evaluate(
        {"input_ids": ids, "labels": labels}, verbose=0, return_dict=True
    )["loss"] == pytest.approx(expected, abs=1e-4)
