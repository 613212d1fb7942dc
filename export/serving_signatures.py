"""The TF Serving signatures: text in, text out, with the tokenizer and the generation loop in-graph.

`GenerationSignatures` (causal LMs) and `ClassificationSignatures` (sequence classifiers) are
`tf.Module`s that hold the model's variables and the tokenizer, and expose one `tf.function` per
signature. Generation runs `tf_mistral.generation.loop.generate_tokens`, the loop `generate()`
compiles, over the model's `forward_with_cache` and a KV cache made inside the graph for each
request: `buckets.cache_length` slots (the buckets `generate()` uses) for its prompt columns + its
max_new_tokens, at most the export's max_length and the sliding window, so that a short request
does not pay for the longest one the export allows. The XLA export keeps one cache of the longest
length (XLA needs static shapes).

Signatures (names and tensors are the serving API; docs/serving.md shows requests and replies):

    serving_default  prompts string [B]                 -> completions string [B],
                                                            token_ids int32 [B, N], num_tokens int32 [B]
                     greedy, up to the export's max_new_tokens (TF signatures have no optional
                     inputs, so this one takes none)
    generate_text    prompts string [B], max_new_tokens int32 [], temperature float32 [],
                     top_p float32 [], top_k int32 [], seed int32 []   -> as serving_default
    chat             roles string [B, M], contents string [B, M], + the five knobs
                                                        -> reply string [B], token_ids, num_tokens
    generate         input_ids int32 [B, L], attention_mask int32 [B, L], + the five knobs
                                                        -> token_ids int32 [B, N], num_tokens int32 [B]
    classify         texts string [B] -> logits float32 [B, C], probabilities float32 [B, C],
                     labels string [B]   (sequence classifiers; also their serving_default)

Request rules (each enforced in-graph; bad values give InvalidArgument, never a crash):
    max_new_tokens   < 1: error. Above the export's `max_new_tokens`: clamped to it.
    temperature      0: greedy. > 0: sampling. Negative or NaN: error.
    top_p            in (0, 1], 1 = no filter; else error.  top_k: 0 or >= vocab = no filter; < 0: error.
    prompts          left-truncated to `max_length - max_new_tokens` tokens, <s> kept; "" is <s> alone.
                     Bytes that are not UTF-8 are read as U+FFFD. Outputs are always valid UTF-8.
    chat             messages with role "" are padding (conversations of different lengths);
                     a conversation mistral-common rejects is an error; over-long ones lose their
                     oldest tokens (<s> kept).
    generate         ids of real tokens must be in [0, vocab); rows may be padded on either side;
                     a row without tokens is an error; over-long rows keep their last tokens.
token_ids: the new tokens, `N` = the most any row made; a row that ended (</s>) is padded with the
pad id after its </s>. num_tokens: tokens each row made, its </s> included.
"""

import keras
import tensorflow as tf

from tf_mistral import cache as kv_cache
from tf_mistral.chat import encode_chat_tensors
from tf_mistral.generation import buckets, loop
from tf_mistral.generation.request import default_pad_token_id, left_align
from tf_mistral.generation.sampling import RUNTIME, SamplingMode
from tf_mistral.tokenizer import MistralTokenizer

_KNOBS = {
    "max_new_tokens": tf.TensorSpec([], tf.int32, name="max_new_tokens"),
    "temperature": tf.TensorSpec([], tf.float32, name="temperature"),
    "top_p": tf.TensorSpec([], tf.float32, name="top_p"),
    "top_k": tf.TensorSpec([], tf.int32, name="top_k"),
    "seed": tf.TensorSpec([], tf.int32, name="seed"),
}


def _function(python_function, signature, jit_compile=False):
    """A `tf.function` with a keyword input signature (the names TF Serving shows)."""
    return tf.function(python_function, input_signature=[signature], autograph=False, jit_compile=jit_compile)


def valid_utf8(texts: tf.Tensor) -> tf.Tensor:
    """tf.string -> the same with every invalid UTF-8 sequence replaced by U+FFFD."""
    return tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)


def keep_last(ids: tf.RaggedTensor, count: int | tf.Tensor) -> tf.RaggedTensor:
    """int32 RaggedTensor [batch, None] -> each row's last `count` ids (count: int scalar >= 0)."""
    lengths = ids.row_lengths()
    kept = tf.ragged.range(tf.maximum(lengths - tf.cast(count, lengths.dtype), 0), lengths)
    flat = tf.gather(ids.flat_values, kept.flat_values + tf.gather(ids.row_starts(), kept.value_rowids()))
    return tf.RaggedTensor.from_row_splits(flat, kept.row_splits, validate=False)


class _Signatures(tf.Module):
    """Holds a model's variables (saved) and its tokenizer; the Keras model itself stays untracked,
    and so do the `tf.function`s in `functions` (`tf.saved_model.save` would trace every tracked
    one again in its save context: a second copy of each graph)."""

    def __init__(self, model, tokenizer, max_length, name):
        super().__init__(name=name)
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "functions", {})  # signature name -> tf.function
        self.model_variables = [weight.value for weight in model.weights]
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def signatures(self):
        """{signature name: concrete function}, traced now."""
        return {name: function.get_concrete_function() for name, function in self.functions.items()}


class GenerationSignatures(_Signatures):
    """Serving signatures of a `TFMistralForCausalLM` with its tokenizer.

    Args:
        model: the causal LM (any dtype policy; its variables are saved as they are).
        tokenizer: `MistralTokenizer` whose ids the model reads.
        max_length: most positions per row, prompt + reply (the longest cache without a window).
        max_new_tokens: most new tokens per request (the output buffer), < max_length.
        xla: compile the generation loop with XLA (`jit_compile`); prompts are then padded to a
            bucket, as `generate()` does, so that new prompt lengths reuse compiled programs, and
            every request has the longest cache, `cache_length`.
    """

    def __init__(
        self, model: keras.Model, tokenizer: MistralTokenizer, max_length: int, max_new_tokens: int,
        xla: bool = False,
    ) -> None:
        super().__init__(model, tokenizer, max_length, name="mistral_generation")
        config = model.config
        self.max_new_tokens = int(max_new_tokens)
        self.xla = bool(xla)
        self.cache_length = kv_cache.cache_length(self.max_length, config.sliding_window)
        self.eos_token_ids = tuple(int(e) for e in config.eos_token_ids)
        self.pad_token_id = default_pad_token_id(config.pad_token_id, self.eos_token_ids)
        self.vocab_size = int(config.vocab_size)

        ids_spec = tf.TensorSpec([None, None], tf.int32)
        generate_ids = _function(
            self._generate_ids_impl, dict(input_ids=ids_spec, attention_mask=ids_spec, **_KNOBS), jit_compile=self.xla
        )
        object.__setattr__(self, "_loop", {"generate_ids": generate_ids})  # untracked, as `functions`
        prompts = {"prompts": tf.TensorSpec([None], tf.string, name="prompts")}
        self.functions.update({
            "serving_default": _function(self._serving_default, prompts),
            "generate_text": _function(self._generate_text, {**prompts, **_KNOBS}),
            "chat": _function(self._chat, {
                "roles": tf.TensorSpec([None, None], tf.string, name="roles"),
                "contents": tf.TensorSpec([None, None], tf.string, name="contents"), **_KNOBS,
            }),
            "generate": _function(self._generate, {
                "input_ids": tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                "attention_mask": tf.TensorSpec([None, None], tf.int32, name="attention_mask"), **_KNOBS,
            }),
        })

    # ---- the loop ---------------------------------------------------------------------------

    def _generate_ids_impl(self, inputs):
        """Left-padded ids -> (tokens int32 [batch, max_new_tokens], steps int32): greedy when
        temperature is 0, else sampling with the runtime top-k / top-p filters (one loop, one
        trace of the model: the choice is made per step)."""
        sampling = loop.Sampling(
            SamplingMode(do_sample=RUNTIME, top_k=RUNTIME, top_p=True), temperature=inputs["temperature"],
            top_p=inputs["top_p"], seed=inputs["seed"], eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id, top_k=inputs["top_k"],
        )
        input_ids, new_tokens = inputs["input_ids"], inputs["max_new_tokens"]
        cache_length = self.cache_length if self.xla else buckets.cache_length(
            tf.shape(input_ids)[1] + new_tokens - 1, self._model.config.sliding_window, self.max_length
        )
        writes = kv_cache.SLICE_WRITES if self.xla else kv_cache.SCATTER_WRITES  # stock TF Serving: no XLA op
        return loop.generate_tokens(
            self._model, input_ids, inputs["attention_mask"], self.max_new_tokens, new_tokens, cache_length, sampling,
            writes,
        )

    def _checked_knobs(self, knobs):
        """The knobs with max_new_tokens clamped, after asserting the rules in the module docstring."""
        checks = [
            tf.debugging.assert_greater_equal(knobs["max_new_tokens"], 1, message="max_new_tokens must be >= 1"),
            tf.debugging.assert_greater_equal(
                knobs["temperature"], 0.0, message="temperature must be >= 0 (0 = greedy)"
            ),
            tf.debugging.assert_greater(knobs["top_p"], 0.0, message="top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(knobs["top_p"], 1.0, message="top_p must be in (0, 1]"),
            tf.debugging.assert_non_negative(knobs["top_k"], message="top_k must be >= 0 (0 = no filter)"),
        ]
        with tf.control_dependencies(checks):
            new_tokens = tf.minimum(knobs["max_new_tokens"], self.max_new_tokens)
        return dict(knobs, max_new_tokens=new_tokens)

    def _run(self, input_ids, attention_mask, knobs):
        """Left-aligned dense ids -> {token_ids [batch, N], num_tokens [batch]}."""
        if self.xla:
            length = tf.shape(input_ids)[1]
            extra = buckets.prompt_bucket(length) - length
            input_ids = tf.pad(input_ids, [[0, 0], [extra, 0]], constant_values=self.pad_token_id)
            attention_mask = tf.pad(attention_mask, [[0, 0], [extra, 0]])
        inputs = dict(knobs, input_ids=input_ids, attention_mask=attention_mask)
        tokens, steps = tf.cond(  # an empty batch gets empty outputs (the model cannot reshape 0 rows)
            tf.shape(input_ids)[0] > 0, lambda: self._loop["generate_ids"](inputs),
            lambda: (tf.zeros([0, self.max_new_tokens], tf.int32), tf.constant(0)),
        )
        tokens = tokens[:, :steps]
        ended = tf.reduce_any(tokens[:, :, None] == tf.constant(list(self.eos_token_ids) or [-1])[None, None], axis=2)
        counts = tf.range(1, tf.shape(tokens)[1] + 1)[None]  # tokens made up to each column
        num_tokens = tf.reduce_min(tf.where(ended, counts, steps), axis=1)
        return {"token_ids": tokens, "num_tokens": num_tokens}

    def _run_ragged(self, ids, knobs):
        """Ragged prompt ids without their <s> -> outputs, with the reply decoded as `text`. Each
        prompt keeps its last `max_length - max_new_tokens - 1` ids, after <s>."""
        knobs = self._checked_knobs(knobs)
        budget = self.max_length - knobs["max_new_tokens"]
        ids = self.tokenizer.add_special_tokens(keep_last(ids, budget - 1), add_bos=True, add_eos=False)
        longest = tf.maximum(tf.reduce_max(tf.cast(ids.row_lengths(), tf.int32)), 1)  # reduce_max([]) is INT_MIN
        input_ids, attention_mask = self.tokenizer.pad(ids, longest, "left")
        outputs = self._run(input_ids, attention_mask, knobs)
        outputs["text"] = self._decode(outputs["token_ids"], outputs["num_tokens"])
        return outputs

    def _decode(self, tokens, num_tokens):
        """Reply text: the first `num_tokens` ids of each row, special tokens dropped, valid UTF-8."""
        ids = tf.RaggedTensor.from_tensor(tokens, lengths=num_tokens)
        ids = tf.ragged.boolean_mask(ids, ids < self.tokenizer.vocab_size)  # a model vocab may be padded
        return valid_utf8(self.tokenizer.detokenize(ids, skip_special_tokens=True))

    # ---- signatures -------------------------------------------------------------------------

    def _serving_default(self, inputs):
        knobs = dict(max_new_tokens=tf.constant(self.max_new_tokens), temperature=tf.constant(0.0),
                     top_p=tf.constant(1.0), top_k=tf.constant(0), seed=tf.constant(0))
        return self._generate_text(dict(inputs, **knobs))

    def _generate_text(self, inputs):
        ids = self.tokenizer.tokenize(valid_utf8(inputs["prompts"]), add_special_tokens=False)
        outputs = self._run_ragged(ids, {name: inputs[name] for name in _KNOBS})
        return {"completions": outputs.pop("text"), **outputs}

    def _chat(self, inputs):
        roles, contents = inputs["roles"], inputs["contents"]
        same_shape = tf.debugging.assert_equal(
            tf.shape(roles), tf.shape(contents), message="roles and contents must have the same shape [batch, messages]"
        )
        with tf.control_dependencies([same_shape]):
            present = tf.not_equal(roles, "")  # role "" marks a padding message
        roles = tf.ragged.boolean_mask(roles, present)
        contents = tf.ragged.boolean_mask(valid_utf8(contents), present)
        ids = encode_chat_tensors(self.tokenizer, roles, contents, add_generation_prompt=True)
        outputs = self._run_ragged(ids[:, 1:], {name: inputs[name] for name in _KNOBS})  # <s> is added back
        return {"reply": outputs.pop("text"), **outputs}

    def _generate(self, inputs):
        knobs = self._checked_knobs({name: inputs[name] for name in _KNOBS})
        ids = inputs["input_ids"]
        same_shape = tf.debugging.assert_equal(
            tf.shape(ids), tf.shape(inputs["attention_mask"]),
            message="input_ids and attention_mask must have the same shape"
        )
        with tf.control_dependencies([same_shape]):
            mask = tf.cast(tf.not_equal(inputs["attention_mask"], 0), tf.int32)
        lengths = tf.reduce_sum(mask, axis=1)
        real = tf.boolean_mask(ids, mask > 0)
        checks = [
            tf.debugging.assert_positive(lengths, message="every row needs at least one token (attention_mask 1)"),
            tf.debugging.assert_non_negative(real, message=f"input_ids must be in [0, {self.vocab_size})"),
            tf.debugging.assert_less(real, self.vocab_size, message=f"input_ids must be in [0, {self.vocab_size})"),
        ]
        with tf.control_dependencies(checks):
            ids, mask = left_align(tf.where(mask > 0, ids, self.pad_token_id), mask)
        keep = tf.clip_by_value(tf.reduce_max(lengths), 1, self.max_length - knobs["max_new_tokens"])
        return self._run(ids[:, -keep:], mask[:, -keep:], knobs)


class ClassificationSignatures(_Signatures):
    """`classify` (also `serving_default`) for a `TFMistralForSequenceClassification`.

    Texts are tokenized with <s>, cut to `max_length` tokens keeping their start, padded on the
    right, and scored by the model's full forward (no cache).
    """

    def __init__(
        self, model: keras.Model, tokenizer: MistralTokenizer, max_length: int
    ) -> None:
        super().__init__(model, tokenizer, max_length, name="mistral_classification")
        config = model.config
        self.label_names = tf.constant([config.id2label[i] for i in range(config.num_labels)])
        self.functions["classify"] = _function(
            self._classify, {"texts": tf.TensorSpec([None], tf.string, name="texts")}
        )

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """`classify`, also as `serving_default`."""
        signatures = super().signatures()
        return {"serving_default": signatures["classify"], **signatures}

    def _classify(self, inputs):
        tokenizer = self.tokenizer
        ids = tokenizer.tokenize(valid_utf8(inputs["texts"]), add_special_tokens=False)
        ids = tokenizer.add_special_tokens(
            tokenizer.truncate(ids, self.max_length - 1, "right"), add_bos=True, add_eos=False
        )
        longest = tf.maximum(tf.reduce_max(tf.cast(ids.row_lengths(), tf.int32)), 1)
        input_ids, attention_mask = tokenizer.pad(ids, longest, "right")
        logits = tf.cond(  # an empty batch gets empty outputs (the model cannot reshape 0 rows)
            tf.shape(input_ids)[0] > 0,
            lambda: tf.cast(self._model(input_ids, attention_mask=attention_mask).logits, tf.float32),
            lambda: tf.zeros([0, self.label_names.shape[0]], tf.float32),
        )
        probabilities = tf.nn.softmax(logits, axis=-1)
        labels = tf.gather(self.label_names, tf.argmax(logits, axis=-1, output_type=tf.int32))
        return {"logits": logits, "probabilities": probabilities, "labels": labels}
