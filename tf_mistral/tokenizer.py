"""Mistral's SentencePiece tokenizer, running in-graph through tensorflow-text.

Encoding is `tensorflow_text.SentencepieceTokenizer` on the model proto, so the same code runs
eagerly, inside `tf.function` / `tf.data`, and in a SavedModel that needs only TF + TF Text.
Ids equal the `sentencepiece` library's (tested on many scripts, emoji, whitespace runs, control
characters, 100k-character strings). The model's normalizer is the identity with
`add_dummy_prefix=True` and `remove_extra_whitespaces=False`, and tensorflow-text applies it exactly
as `sentencepiece` 0.2 does: leading, trailing and repeated spaces are kept, one "▁" is prefixed.

Decoding needs one fix. The sentencepiece inside tensorflow-text is older: its decoder strips the
leading "▁" from *every* piece while the output is still empty, where sentencepiece 0.2 strips it
from the first piece only. `[28705 "▁", 22557 "▁Hello"]` (the encoding of " Hello") decodes to
"Hello" there and to " Hello" in sentencepiece. `detokenize` therefore decodes behind a one-byte
anchor piece (so the op never strips) and strips the single dummy-prefix space itself.

Inputs must be valid UTF-8: the Python API raises on anything else. Inside a graph, invalid bytes
are encoded as U+FFFD, the same as `sentencepiece`. Text containing "▁" (U+2581) decodes with a
space in its place, as in `sentencepiece` (the model uses "▁" for spaces).
"""

import base64
import functools
import importlib.resources
import pathlib

import keras
import numpy as np
import sentencepiece
import tensorflow as tf
import tensorflow_text as tf_text

# Tokenizer files shipped inside the mistral-common package (a runtime dependency).
DEFAULT_MODEL_FILES = {
    "v1": "tokenizer.model.v1",  # Mistral-7B v0.1, Instruct v0.1 / v0.2: 32000 pieces
    "v3": "mistral_instruct_tokenizer_240323.model.v3",  # v0.3: 32768 pieces, [INST] etc. are control ids
}
CHAT_FORMATS = ("v1", "v3")
# Label for positions the causal LM loss ignores (padding).
IGNORE_INDEX = -100
_SIDES = ("left", "right")


def _check_side(name, side):
    if side not in _SIDES:
        raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
    return side


def _find_model_file(path):
    """The SentencePiece file for `path`: the file itself, or tokenizer.model[.vN] in a folder."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"no tokenizer at {path}: pass a checkpoint folder holding tokenizer.model, "
            "or the path of a SentencePiece .model file"
        )
    for candidate in [path / "tokenizer.model", *sorted(path.glob("tokenizer.model.v*"))]:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{path} holds no tokenizer.model (or tokenizer.model.v*); files there: "
        f"{sorted(p.name for p in path.iterdir())}"
    )


class _SentencepieceOp(tf.Module):
    """`tensorflow_text.SentencepieceTokenizer` that survives `tf.random.set_seed`.

    Setting the global seed clears TensorFlow's eager kernel cache, and with it the kernel that
    owns the SentencePiece model resource; the next eager call then fails with NotFoundError.
    Eager calls rebuild the op once and retry; traced graphs hold the resource they were built
    with (the tokenizer's own traced decode rebuilds and traces again: `_decode_rows`).
    """

    def __init__(self, model_proto, **options):
        super().__init__()
        self._arguments = dict(model=model_proto, out_type=tf.int32, **options)
        self._op = tf_text.SentencepieceTokenizer(**self._arguments)

    def _call(self, method, values):
        try:
            return getattr(self._op, method)(values)
        except tf.errors.NotFoundError as error:
            if not tf.executing_eagerly() or not _lost_resource(error):
                raise
            self.rebuild()
            return getattr(self._op, method)(values)

    def rebuild(self):
        """A new op (and SentencePiece resource), after `tf.random.set_seed` dropped the old one."""
        self._op = tf_text.SentencepieceTokenizer(**self._arguments)

    def tokenize(self, texts):
        return self._call("tokenize", texts)

    def detokenize(self, ids):
        return self._call("detokenize", ids)


def _lost_resource(error):
    """Whether a NotFoundError says the SentencePiece resource is gone (see `_SentencepieceOp`)."""
    return "Sentencepiece" in str(error)


def _load_processor(model_proto):
    if not isinstance(model_proto, bytes):
        raise TypeError(f"model_proto must be the bytes of a SentencePiece model, got {type(model_proto).__name__}")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError) as error:
        raise ValueError(f"model_proto is not a SentencePiece model ({error})") from None
    return processor


def _chat_format(chat_format, special_tokens):
    """The chat format for a vocabulary: "v3" when [INST] / [/INST] are control tokens, else "v1"."""
    has_inst = "[INST]" in special_tokens and "[/INST]" in special_tokens
    if chat_format is None:
        return "v3" if has_inst else "v1"
    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"chat_format must be one of {CHAT_FORMATS}, got {chat_format!r}")
    if chat_format == "v3" and not has_inst:
        raise ValueError("chat_format 'v3' needs [INST] / [/INST] control tokens; this vocabulary lacks them (v1?)")
    return chat_format


def _anchor_id(processor):
    """Id of a normal piece that is one ASCII character (not "▁"): decodes to exactly one byte."""
    for piece_id in range(processor.get_piece_size()):
        piece = processor.id_to_piece(piece_id)
        normal = not (processor.is_control(piece_id) or processor.is_unknown(piece_id) or processor.is_byte(piece_id))
        if normal and len(piece) == 1 and piece.isascii():
            return piece_id
    raise ValueError("the SentencePiece model has no single-ASCII-character piece, which decoding relies on")


def _wrap(ids, first=None, last=None):
    """Prepend `first` / append `last` (ids, None for nothing) to every row.

    ids: int32 RaggedTensor [batch, None] -> int32 RaggedTensor [batch, None].
    """
    extra = (first is not None) + (last is not None)
    if not extra:
        return ids
    values = ids.flat_values
    splits = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(ids.row_lengths() + extra)], axis=0)
    positions = [tf.range(tf.size(values, out_type=tf.int64)) + ids.value_rowids() * extra + (first is not None)]
    parts = [values]
    for token, position in ((first, splits[:-1]), (last, splits[1:] - 1)):
        if token is not None:
            positions.append(position)
            parts.append(tf.fill(tf.shape(position), tf.constant(token, tf.int32)))
    wrapped = tf.dynamic_stitch([tf.cast(position, tf.int32) for position in positions], parts)
    return tf.RaggedTensor.from_row_splits(wrapped, splits, validate=False)


def _drop_first_byte(texts):
    """tf.string [n] -> the same without their first byte ("" stays "")."""
    lengths = tf.strings.length(texts)
    start = tf.minimum(lengths, 1)
    return tf.strings.substr(texts, start, lengths - start)


def check_text(value, where):
    """`value` as a str (UTF-8 bytes are decoded), or an error that names `where` it came from."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{where} is bytes that are not valid UTF-8 ({error})") from None
    if not isinstance(value, str):
        raise TypeError(f"{where} is {type(value).__name__} ({value!r:.40}); expected str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{where} cannot be encoded as UTF-8 ({error})") from None
    return value


def _as_text_batch(text):
    """(list of str, whether a single text was given)."""
    if isinstance(text, (str, bytes)):
        return [check_text(text, "text 0")], True
    if isinstance(text, (tf.Tensor, np.ndarray)):
        raise TypeError("pass Python strings here; for tf.string tensors use tokenize() or MistralPreprocessor")
    if not isinstance(text, (list, tuple)):
        raise TypeError(f"expected a str or a list of str, got {type(text).__name__}")
    return [check_text(item, f"text {i}") for i, item in enumerate(text)], False


def _padding_mode(padding, max_length):
    """None (no padding), "longest" or "max_length"."""
    if padding is False or padding is None or padding == "do_not_pad":
        return None
    if padding is True or padding == "longest":
        return "longest"
    if padding == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        return "max_length"
    raise ValueError(f"padding must be True/'longest', 'max_length' or False, got {padding!r}")


def _round_up(length, multiple):
    return length if not multiple else -(-length // multiple) * multiple


class MistralTokenizer(tf.Module):
    """SentencePiece tokenizer for Mistral-7B, HF-style calls over in-graph ops.

    Args:
        model_proto: bytes of the SentencePiece model (tokenizer.model).
        add_bos: prepend <s> (id 1) when encoding text, as HF's LlamaTokenizer does for Mistral.
        add_eos: append </s> (id 2) when encoding text.
        pad_token_id: id used for padding. Mistral has no pad token; the default 0 is <unk>, which
            encoding never produces (byte fallback covers every character), so padding is
            unambiguous. Every padded output also carries `attention_mask`.
        padding_side: "left" (default, for generation) or "right".
        chat_format: "v1" (7B v0.1 / Instruct v0.1, v0.2) or "v3" (v0.3); by default "v3" when the
            vocabulary has an [INST] control token, else "v1".

    Example:
        tok = MistralTokenizer.from_pretrained("path/to/ckpt")
        batch = tok(["My favourite condiment is", "Hi"], return_tensors="tf", padding=True)
        texts = tok.batch_decode(generated_ids, skip_special_tokens=True)
    """

    def __init__(
        self,
        model_proto,
        *,
        add_bos=True,
        add_eos=False,
        pad_token_id=0,
        padding_side="left",
        chat_format=None,
        name="mistral_tokenizer",
    ):
        super().__init__(name=name)
        processor = _load_processor(model_proto)
        self.model_proto = model_proto
        self.vocab_size = processor.get_piece_size()
        self.bos_token_id = processor.bos_id()
        self.eos_token_id = processor.eos_id()
        self.unk_token_id = processor.unk_id()
        if not 0 <= pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {pad_token_id} is outside the vocabulary [0, {self.vocab_size})")
        self.pad_token_id = pad_token_id
        self._add_bos, self._add_eos = bool(add_bos), bool(add_eos)
        self.padding_side = _check_side("padding_side", padding_side)

        pieces = [processor.id_to_piece(i) for i in range(self.vocab_size)]
        is_control = [processor.is_control(i) for i in range(self.vocab_size)]
        # Control tokens, piece -> id: <s>, </s> (and [INST], [/INST], ... in v3).
        self.special_tokens = {piece: i for i, (piece, control) in enumerate(zip(pieces, is_control)) if control}
        self.chat_format = _chat_format(chat_format, self.special_tokens)
        # Graph constants, indexed by token id.
        self._pieces = tf.constant(pieces)  # string [vocab]
        self._is_control = tf.constant(is_control)  # bool [vocab]
        self._strips_space = tf.constant(  # bool [vocab]: a normal piece starting with "▁"
            [
                piece.startswith("\u2581") and not (control or processor.is_unknown(i) or processor.is_byte(i))
                for i, (piece, control) in enumerate(zip(pieces, is_control))
            ]
        )
        self._anchor_id = _anchor_id(processor)
        self._sentencepiece = _SentencepieceOp(model_proto)
        # The op adds <s> / </s> itself at no cost; adding them afterwards costs as much as encoding.
        self._sentencepiece_with_special_tokens = _SentencepieceOp(
            model_proto, add_bos=self.add_bos, add_eos=self.add_eos
        )

    @property
    def add_bos(self):
        """Whether encoding prepends <s>; fixed at construction (the encoding op is built with it)."""
        return self._add_bos

    @property
    def add_eos(self):
        """Whether encoding appends </s>; fixed at construction."""
        return self._add_eos

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path=None, **kwargs):
        """Load tokenizer.model from a checkpoint folder (or a .model file); no path: `default("v1")`."""
        if path is None:
            return cls.default("v1", **kwargs)
        return cls(_find_model_file(path).read_bytes(), **kwargs)

    @classmethod
    def default(cls, version="v1", **kwargs):
        """The real Mistral tokenizer shipped in mistral-common: "v1" (7B v0.1/v0.2) or "v3" (v0.3)."""
        if version not in DEFAULT_MODEL_FILES:
            raise ValueError(f"version must be one of {sorted(DEFAULT_MODEL_FILES)}, got {version!r}")
        data = importlib.resources.files("mistral_common") / "data" / DEFAULT_MODEL_FILES[version]
        return cls(data.read_bytes(), **kwargs)

    def get_config(self):
        """JSON-serialisable arguments of `from_config` (the model proto base64-encoded)."""
        return {
            "model_proto": base64.b64encode(self.model_proto).decode("ascii"),
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "pad_token_id": self.pad_token_id,
            "padding_side": self.padding_side,
            "chat_format": self.chat_format,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(base64.b64decode(config.pop("model_proto")), **config)

    # ---- in-graph ops ---------------------------------------------------------------------------

    def tokenize(self, texts, add_special_tokens=True):
        """Encode in-graph. tf.string [batch] -> int32 RaggedTensor [batch, None]; a scalar -> int32 [len].

        With `add_special_tokens`, <s> / </s> are added per `add_bos` / `add_eos`.
        """
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank == 0:
            return self.tokenize(texts[tf.newaxis], add_special_tokens)[0]
        encoder = self._sentencepiece_with_special_tokens if add_special_tokens else self._sentencepiece
        return encoder.tokenize(texts)

    def add_special_tokens(self, ids, add_bos, add_eos):
        """int32 RaggedTensor [batch, None] -> the same with <s> prepended / </s> appended."""
        return _wrap(ids, self.bos_token_id if add_bos else None, self.eos_token_id if add_eos else None)

    def truncate(self, ids, length, side):
        """Keep at most `length` ids per row: the last ones (side "left") or the first ("right").

        ids: int32 RaggedTensor [batch, None]; length: Python int >= 0.
        """
        _check_side("truncation_side", side)
        if length == 0:
            return ids[:, :0]
        return ids[:, -length:] if side == "left" else ids[:, :length]

    def pad(self, ids, length, side):
        """Pad rows to `length` with `pad_token_id`. Rows must not be longer than `length`.

        ids: int RaggedTensor [batch, None]; length: int or int scalar tensor.
        Returns (input_ids int32 [batch, length], attention_mask int32 [batch, length]).
        """
        _check_side("padding_side", side)
        ids = tf.cast(ids, tf.int32)
        lengths = tf.cast(ids.row_lengths(), tf.int32)[:, tf.newaxis]  # [batch, 1]
        # A Python int keeps the static shape [batch, length] (Keras needs it when training).
        shape = [None, length] if isinstance(length, int) else tf.stack([ids.nrows(), tf.cast(length, tf.int64)])
        right = ids.to_tensor(self.pad_token_id, shape=shape)
        positions = tf.range(length)[tf.newaxis, :]  # [1, length]
        if side == "right":
            return right, tf.cast(positions < lengths, tf.int32)
        source = positions - (length - lengths)  # where each left-padded slot reads from
        mask = source >= 0
        left = tf.where(mask, tf.gather(right, tf.maximum(source, 0), batch_dims=1), self.pad_token_id)
        return left, tf.cast(mask, tf.int32)

    def detokenize(self, ids, skip_special_tokens=False):
        """Decode in-graph, equal to `sentencepiece` decode. int [batch, None] (dense or ragged) -> tf.string [batch].

        A rank-1 tensor decodes to a scalar. Special ids (control tokens such as <s>, </s>, [INST],
        and `pad_token_id`) are dropped with `skip_special_tokens`, else written as their pieces
        ("<s>"); the text between them decodes as sentencepiece decodes the whole sequence.
        """
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.convert_to_tensor(ids)
            if ids.shape.rank == 1:
                return self.detokenize(ids[tf.newaxis], skip_special_tokens)[0]
            ids = tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        with tf.control_dependencies(self._assert_in_vocab(ids.flat_values)):
            values = tf.identity(ids.flat_values)
        special = tf.gather(self._is_control, values) | tf.equal(values, self.pad_token_id)
        if skip_special_tokens:
            ids = tf.ragged.boolean_mask(ids.with_flat_values(values), ids.with_flat_values(~special))
            values, special = ids.flat_values, tf.zeros_like(ids.flat_values, tf.bool)
        rows = ids.value_rowids()  # int64 [ids]
        position = tf.ragged.range(ids.row_lengths()).flat_values
        # Segments: each special id opens one (written as its piece); so does the start of a row.
        opens = special | tf.equal(position, 0)
        segment = tf.cumsum(tf.cast(opens, tf.int64)) - 1
        segment_row = tf.boolean_mask(rows, opens)
        heads = tf.boolean_mask(tf.where(special, tf.gather(self._pieces, values), ""), opens)
        bodies = tf.RaggedTensor.from_value_rowids(  # the non-special ids of each segment
            tf.boolean_mask(values, ~special), tf.boolean_mask(segment, ~special), tf.size(segment_row, tf.int64)
        )
        texts = heads + self._decode_segments(bodies, segment_row, ids.nrows())
        return tf.strings.unsorted_segment_join(texts, segment_row, ids.nrows())

    def _assert_in_vocab(self, values):
        message = f"token ids must be in [0, {self.vocab_size}) (the vocabulary)"
        return [
            tf.debugging.assert_non_negative(values, message=message),
            tf.debugging.assert_less(values, self.vocab_size, message=message),
        ]

    def _decode_without_stripping(self, ids):
        """tf-text decode of each row behind the anchor piece, which is then cut: no space stripped."""
        return _drop_first_byte(self._sentencepiece.detokenize(_wrap(ids, first=self._anchor_id)))

    def _decode_segments(self, bodies, segment_row, rows):
        """Decode segment bodies; drop the one space sentencepiece strips per row.

        That is the leading "▁" of the row's first non-special piece, when that piece is a normal
        piece starting with "▁" (not a byte or <unk>). bodies: int32 RaggedTensor [segments, None].
        """
        segments = tf.range(bodies.nrows())
        nonempty = bodies.row_lengths() > 0
        first_nonempty = tf.math.unsorted_segment_min(tf.where(nonempty, segments, bodies.nrows()), segment_row, rows)
        first_piece = bodies[:, :1].to_tensor(self._anchor_id, shape=tf.stack([bodies.nrows(), 1]))[:, 0]
        is_first = tf.equal(segments, tf.gather(first_nonempty, segment_row))
        strip = is_first & tf.gather(self._strips_space, first_piece)
        texts = self._decode_without_stripping(bodies)
        return tf.where(strip, _drop_first_byte(texts), texts)

    # ---- Python API -----------------------------------------------------------------------------

    def __call__(
        self,
        text,
        *,
        padding=False,
        truncation=False,
        max_length=None,
        pad_to_multiple_of=None,
        padding_side=None,
        truncation_side=None,
        add_special_tokens=True,
        return_tensors=None,
    ):
        """Encode a str or a list of str into {"input_ids", "attention_mask"}.

        Args:
            text: str (or UTF-8 bytes), or a list of them.
            padding: False (none), True / "longest" (to the longest row), or "max_length".
            truncation: cut rows longer than `max_length`. Rule: tokens are cut on the
                `truncation_side`, which defaults to the padding side, so left-padded prompts keep
                their end (the part next to the generated text) and right-padded inputs keep their
                beginning. <s> / </s> are never cut: they are added after truncation.
            max_length: hard limit on row length; without `truncation`, a longer row is an error.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            padding_side / truncation_side: "left" or "right" (default: `self.padding_side`).
            add_special_tokens: add <s> / </s> per `add_bos` / `add_eos`.
            return_tensors: None (Python lists), "np" or "tf".

        Returns:
            dict with "input_ids" and "attention_mask", int32 [batch, length] ([length] lists for
            a single str with return_tensors=None). Unpadded rows of different lengths can only be
            returned as lists.
        """
        texts, single = _as_text_batch(text)
        mode = _padding_mode(padding, max_length)
        padding_side = _check_side("padding_side", padding_side or self.padding_side)
        texts = tf.constant(texts, tf.string, shape=[len(texts)])
        if truncation:
            ids = self._truncated(texts, max_length, truncation_side or padding_side, add_special_tokens)
        else:
            ids = self.tokenize(texts, add_special_tokens)
            self._check_max_length(ids, max_length)
        return self._batch_output(ids, single, mode, max_length, pad_to_multiple_of, padding_side, return_tensors)

    def encode(self, text, add_special_tokens=True):
        """One str -> list of ids."""
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"encode takes one str, got {type(text).__name__}; call the tokenizer for a batch")
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids, skip_special_tokens=False):
        """One sequence of ids (list, numpy, tf tensor) -> str."""
        rows = _as_id_rows(ids, self.vocab_size, single=True)
        return self._decode_rows(rows, skip_special_tokens)[0].decode("utf-8")

    def batch_decode(self, sequences, skip_special_tokens=False):
        """A batch of id sequences ([batch, len] tensor/array, RaggedTensor, list of lists) -> list of str.

        Padding is `pad_token_id`: dropped with `skip_special_tokens`, else written as its piece.
        """
        rows = _as_id_rows(sequences, self.vocab_size, single=False)
        return [text.decode("utf-8") for text in self._decode_rows(rows, skip_special_tokens)]

    def _decode_rows(self, rows, skip_special_tokens):
        """Bytes [batch] of int32 RaggedTensor rows, through `_traced_detokenize`."""
        try:
            return self._traced_detokenize[bool(skip_special_tokens)](rows).numpy()
        except tf.errors.NotFoundError as error:
            if not _lost_resource(error):
                raise
            self._sentencepiece.rebuild()
            del self.__dict__["_traced_detokenize"]  # trace again, over the new resource
            return self._traced_detokenize[bool(skip_special_tokens)](rows).numpy()

    @functools.cached_property
    def _traced_detokenize(self):
        """`detokenize` as a traced function per `skip_special_tokens`, for the Python API: on
        CPU a call costs under a millisecond, the same ops run eagerly over ten (a streamer
        decodes at every token). Kept out of SavedModels: a cached_property is not tracked."""
        rows = tf.RaggedTensorSpec([None, None], tf.int32, ragged_rank=1, row_splits_dtype=tf.int64)
        return {
            skip: tf.function(functools.partial(self.detokenize, skip_special_tokens=skip), input_signature=[rows])
            for skip in (False, True)
        }

    def apply_chat_template(
        self,
        conversation,
        *,
        add_generation_prompt=True,
        continue_final_message=False,
        return_tensors=None,
        return_dict=False,
        padding_side=None,
    ):
        """Token ids of a chat, equal to mistral-common's `encode_chat_completion`.

        Args:
            conversation: list of {"role": "system"|"user"|"assistant", "content": str}, or a
                list of such conversations (a batch, padded on `padding_side`).
            add_generation_prompt: the ids end where the assistant reply starts; a conversation
                ending with an assistant message is then an error, as in mistral-common. Pass
                False to encode a finished conversation (it ends with </s>, for training).
            continue_final_message: the last (assistant) message is left open, without </s>, so
                the model continues it (mistral-common's `prefix=True`). Overrides
                `add_generation_prompt`.
            return_tensors: None (lists), "np" or "tf" (int32 [batch, len], batch 1 for one chat).
            return_dict: return {"input_ids", "attention_mask"} instead of the ids alone.
        See `tf_mistral.chat` for the format.
        """
        from tf_mistral import chat  # chat imports this module

        sequence = (list, tuple)
        single = not (isinstance(conversation, sequence) and conversation and isinstance(conversation[0], sequence))
        conversations = [conversation] if single else conversation
        checked = [
            chat.check_conversation(c, add_generation_prompt, continue_final_message, index=None if single else i)
            for i, c in enumerate(conversations)
        ]
        roles = tf.ragged.constant([r for r, _ in checked], dtype=tf.string, row_splits_dtype=tf.int64)
        contents = tf.ragged.constant([c for _, c in checked], dtype=tf.string, row_splits_dtype=tf.int64)
        ids = chat.encode_chat_tensors(self, roles, contents, add_generation_prompt, continue_final_message)
        padding_side = _check_side("padding_side", padding_side or self.padding_side)
        mode = None if single else "longest"
        batch = self._batch_output(ids, single, mode, None, None, padding_side, return_tensors)
        return batch if return_dict else batch["input_ids"]

    def _truncated(self, texts, max_length, side, add_special_tokens):
        """Encode, cut the text ids to fit `max_length` with the special tokens, then add those."""
        if max_length is None:
            raise ValueError("truncation=True needs max_length")
        n_special = (self.add_bos + self.add_eos) * add_special_tokens
        if max_length < n_special:
            raise ValueError(f"max_length={max_length} leaves no room for the {n_special} special tokens")
        ids = self.truncate(self._sentencepiece.tokenize(texts), max_length - n_special, side)
        return self.add_special_tokens(ids, self.add_bos and add_special_tokens, self.add_eos and add_special_tokens)

    def _check_max_length(self, ids, max_length):
        if max_length is None:
            return
        lengths = ids.row_lengths().numpy()
        too_long = np.flatnonzero(lengths > max_length)
        if too_long.size:
            i = too_long[0]
            raise ValueError(
                f"text {i} has {lengths[i]} tokens, more than max_length={max_length}: "
                "pass truncation=True to cut it, or raise max_length"
            )

    def _batch_output(self, ids, single, mode, max_length, pad_to_multiple_of, padding_side, return_tensors):
        """Ragged ids -> {"input_ids", "attention_mask"} in the requested container."""
        if return_tensors not in (None, "np", "tf"):
            raise ValueError(f"return_tensors must be None, 'np' or 'tf', got {return_tensors!r}")
        lengths = ids.row_lengths().numpy()
        if mode is None:
            if return_tensors is None:
                rows = ids.to_list()
                lists = {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]}
                return {key: value[0] for key, value in lists.items()} if single else lists
            if len(set(lengths.tolist())) > 1:
                raise ValueError(
                    f"texts have different lengths {sorted(set(lengths.tolist()))}: pass padding=True to get tensors"
                )
        length = max_length if mode == "max_length" else int(lengths.max(initial=0))
        input_ids, attention_mask = self.pad(ids, _round_up(length, pad_to_multiple_of), padding_side)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if return_tensors == "tf":
            return batch
        if return_tensors == "np":
            return {key: value.numpy() for key, value in batch.items()}
        lists = {key: value.numpy().tolist() for key, value in batch.items()}
        return {key: value[0] for key, value in lists.items()} if single else lists


def _as_id_rows(ids, vocab_size, single):
    """Validated int32 RaggedTensor [batch, None] from tensors, arrays or lists of ints.

    single: `ids` is one sequence (a flat list, rank-1 array/tensor, or a batch of one).
    """
    if isinstance(ids, tf.RaggedTensor):
        ids = ids.to_list()
    elif isinstance(ids, tf.Tensor):
        ids = ids.numpy()
    if not isinstance(ids, (list, tuple, np.ndarray)):
        raise TypeError(f"ids must be a list, numpy array or tf tensor, got {type(ids).__name__}")
    if isinstance(ids, np.ndarray) and ids.ndim not in (1, 2):
        raise ValueError(f"ids must have rank 1 or 2, got shape {ids.shape}")
    flat = not _is_sequence(ids[0]) if len(ids) else single
    if flat and not single:
        raise ValueError("batch_decode takes a batch of sequences, e.g. [[1, 2], [1, 3]]; use decode for one")
    rows = [ids] if flat else list(ids)
    if single and len(rows) != 1:
        raise ValueError(f"decode takes one sequence, got {len(rows)}; use batch_decode for a batch")
    arrays = [_id_array(row, i, vocab_size) for i, row in enumerate(rows)]
    return tf.ragged.constant([row.tolist() for row in arrays], dtype=tf.int32, row_splits_dtype=tf.int64)


def _is_sequence(value):
    return isinstance(value, (list, tuple, np.ndarray, tf.Tensor))


def _id_array(row, index, vocab_size):
    """int64 [len] from one sequence, or an error naming its index and the offending position."""
    if isinstance(row, tf.Tensor):
        row = row.numpy()
    for j, value in enumerate(row if isinstance(row, (list, tuple)) else []):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"sequence {index}, position {j}: {value!r} is not an integer token id")
    row = np.asarray(row)
    if row.ndim != 1:
        raise ValueError(f"sequence {index} has shape {row.shape}; expected a flat sequence of ids")
    if row.size and row.dtype.kind not in "iu":
        raise TypeError(f"sequence {index} has dtype {row.dtype}; token ids must be integers")
    bad = np.flatnonzero((row < 0) | (row >= vocab_size))
    if bad.size:
        j = bad[0]
        raise ValueError(
            f"sequence {index}, position {j}: token id {row[j]} is outside the vocabulary [0, {vocab_size})"
        )
    return row.astype(np.int64)


@keras.saving.register_keras_serializable(package="tf_mistral")
class MistralPreprocessor(keras.layers.Layer):
    """Strings -> fixed-length model inputs, in-graph: use it in `dataset.map` or a SavedModel.

    call(texts): tf.string [batch] (or a scalar) -> dict of int32 [batch, sequence_length]
    (or [sequence_length]): "input_ids", "attention_mask", and with `add_labels` "labels" (the
    input ids with padding set to -100; the causal LM loss shifts them). Rows are truncated on the
    padding side to fit (<s> / </s> are kept, see `MistralTokenizer.__call__`).

    Args:
        tokenizer: a MistralTokenizer (default: `MistralTokenizer.default("v1")`).
        sequence_length: length of every output row.
        padding_side: "right" (default, for training) or "left" (for generation).
        add_labels: also return "labels", for causal LM training.
        add_eos: append </s>; default: `add_labels` (training text ends with </s> so the model
            learns to stop). <s> follows the tokenizer's `add_bos`.
    """

    def __init__(
        self, tokenizer=None, sequence_length=512, padding_side="right", add_labels=False, add_eos=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer or MistralTokenizer.default("v1")
        self.sequence_length = int(sequence_length)
        self.padding_side = _check_side("padding_side", padding_side)
        self.add_labels = bool(add_labels)
        self.add_eos = self.add_labels if add_eos is None else bool(add_eos)
        n_special = self.tokenizer.add_bos + self.add_eos
        if self.sequence_length < n_special:
            raise ValueError(f"sequence_length={sequence_length} leaves no room for the {n_special} special tokens")
        self.built = True

    def call(self, texts):
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank == 0:
            return {key: value[0] for key, value in self.call(texts[tf.newaxis]).items()}
        tokenizer = self.tokenizer
        ids = tokenizer.tokenize(texts, add_special_tokens=False)
        ids = tokenizer.truncate(ids, self.sequence_length - tokenizer.add_bos - self.add_eos, self.padding_side)
        ids = tokenizer.add_special_tokens(ids, tokenizer.add_bos, self.add_eos)
        input_ids, attention_mask = tokenizer.pad(ids, self.sequence_length, self.padding_side)
        outputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.add_labels:
            outputs["labels"] = tf.where(attention_mask > 0, input_ids, IGNORE_INDEX)
        return outputs

    def compute_output_spec(self, texts):
        shape = tuple(texts.shape) + (self.sequence_length,)
        names = ["input_ids", "attention_mask"] + ["labels"] * self.add_labels
        return {name: keras.KerasTensor(shape, dtype="int32") for name in names}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "tokenizer": self.tokenizer.get_config(),
                "sequence_length": self.sequence_length,
                "padding_side": self.padding_side,
                "add_labels": self.add_labels,
                "add_eos": self.add_eos,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["tokenizer"] = MistralTokenizer.from_config(config["tokenizer"])
        return cls(**config)
