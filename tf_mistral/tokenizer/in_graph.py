"""The tokenizer as TF ops only: what graphs, `tf.data` and SavedModels call.

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

Inside a graph, invalid UTF-8 bytes are encoded as U+FFFD, the same as `sentencepiece` (the Python
API raises on them instead). Text containing "▁" (U+2581) decodes with a space in its place, as
in `sentencepiece` (the model uses "▁" for spaces).
"""

import tensorflow as tf

from tf_mistral.tokenizer.inputs import check_side
from tf_mistral.tokenizer.sentencepiece_op import SentencepieceOp, anchor_id, load_processor

CHAT_FORMATS = ("v1", "v3")


class InGraphTokenizer(tf.Module):
    """Mistral's SentencePiece tokenizer as TF ops: encode, decode, pad, truncate, special tokens.

    `MistralTokenizer` adds the HF-style Python API (`__call__`, `decode`, `apply_chat_template`)
    and the constructors from files; build that one.

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
        name: the `tf.Module` name.
    """

    def __init__(
        self,
        model_proto: bytes,
        *,
        add_bos: bool = True,
        add_eos: bool = False,
        pad_token_id: int = 0,
        padding_side: str = "left",
        chat_format: str | None = None,
        name: str = "mistral_tokenizer",
    ) -> None:
        super().__init__(name=name)
        processor = load_processor(model_proto)
        self.model_proto = model_proto
        self.vocab_size = processor.get_piece_size()
        self.bos_token_id = processor.bos_id()
        self.eos_token_id = processor.eos_id()
        self.unk_token_id = processor.unk_id()
        if not 0 <= pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {pad_token_id} is outside the vocabulary [0, {self.vocab_size})")
        self.pad_token_id = pad_token_id
        self._add_bos, self._add_eos = bool(add_bos), bool(add_eos)
        self.padding_side = check_side("padding_side", padding_side)

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
        self._anchor_id = anchor_id(processor)
        self._sentencepiece = SentencepieceOp(model_proto)
        # The op adds <s> / </s> itself at no cost; adding them afterwards costs as much as encoding.
        self._sentencepiece_with_special_tokens = SentencepieceOp(
            model_proto, add_bos=self.add_bos, add_eos=self.add_eos
        )

    @property
    def add_bos(self) -> bool:
        """Whether encoding prepends <s>; fixed at construction (the encoding op is built with it)."""
        return self._add_bos

    @property
    def add_eos(self) -> bool:
        """Whether encoding appends </s>; fixed at construction."""
        return self._add_eos

    def tokenize(
        self, texts: tf.Tensor | str | list[str], add_special_tokens: bool = True
    ) -> tf.RaggedTensor | tf.Tensor:
        """Encode in-graph. tf.string [batch] -> int32 RaggedTensor [batch, None]; a scalar -> int32 [len].

        With `add_special_tokens`, <s> / </s> are added per `add_bos` / `add_eos`.
        """
        texts = tf.convert_to_tensor(texts, tf.string)
        if texts.shape.rank == 0:
            return self.tokenize(texts[tf.newaxis], add_special_tokens)[0]
        encoder = self._sentencepiece_with_special_tokens if add_special_tokens else self._sentencepiece
        return encoder.tokenize(texts)

    def add_special_tokens(self, ids: tf.RaggedTensor, add_bos: bool, add_eos: bool) -> tf.RaggedTensor:
        """int32 RaggedTensor [batch, None] -> the same with <s> prepended / </s> appended."""
        return _wrap(ids, self.bos_token_id if add_bos else None, self.eos_token_id if add_eos else None)

    def truncate(self, ids: tf.RaggedTensor, length: int, side: str) -> tf.RaggedTensor:
        """Keep at most `length` ids per row: the last ones (side "left") or the first ("right").

        ids: int32 RaggedTensor [batch, None]; length: Python int >= 0.
        """
        check_side("truncation_side", side)
        if length == 0:
            return ids[:, :0]
        return ids[:, -length:] if side == "left" else ids[:, :length]

    def pad(self, ids: tf.RaggedTensor, length: int | tf.Tensor, side: str) -> tuple[tf.Tensor, tf.Tensor]:
        """Pad rows to `length` with `pad_token_id`. Rows must not be longer than `length`.

        ids: int RaggedTensor [batch, None]; length: int or int scalar tensor.
        Returns (input_ids int32 [batch, length], attention_mask int32 [batch, length]).
        """
        check_side("padding_side", side)
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

    def detokenize(self, ids: tf.Tensor | tf.RaggedTensor, skip_special_tokens: bool = False) -> tf.Tensor:
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
