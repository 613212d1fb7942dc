"""One SentencePiece model, held twice: the `sentencepiece` processor, read once for the facts of
the vocabulary, and the tensorflow-text op that encodes and decodes in-graph, rebuilt when
`tf.random.set_seed` drops its resource."""

from typing import Any

import sentencepiece
import tensorflow as tf
import tensorflow_text as tf_text


class SentencepieceOp(tf.Module):
    """`tensorflow_text.SentencepieceTokenizer` that survives `tf.random.set_seed`.

    Setting the global seed clears TensorFlow's eager kernel cache, and with it the kernel that
    owns the SentencePiece model resource; the next eager call then fails with NotFoundError.
    Eager calls rebuild the op once and retry; traced graphs hold the resource they were built
    with (the tokenizer's own traced decode rebuilds and traces again:
    `MistralTokenizer._decode_rows`).

    Args:
        model_proto: bytes of the SentencePiece model.
        **options: more arguments of `tensorflow_text.SentencepieceTokenizer` (`add_bos`, `add_eos`).
    """

    def __init__(self, model_proto: bytes, **options: Any) -> None:
        super().__init__()
        self._arguments = dict(model=model_proto, out_type=tf.int32, **options)
        self._op = tf_text.SentencepieceTokenizer(**self._arguments)

    def _call(self, method, values):
        try:
            return getattr(self._op, method)(values)
        except tf.errors.NotFoundError as error:
            if not tf.executing_eagerly() or not lost_resource(error):
                raise
            self.rebuild()
            return getattr(self._op, method)(values)

    def rebuild(self) -> None:
        """A new op (and SentencePiece resource), after `tf.random.set_seed` dropped the old one."""
        self._op = tf_text.SentencepieceTokenizer(**self._arguments)

    def tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """tf.string [batch] -> int32 RaggedTensor [batch, None]."""
        return self._call("tokenize", texts)

    def detokenize(self, ids: tf.RaggedTensor) -> tf.Tensor:
        """int32 RaggedTensor [batch, None] -> tf.string [batch] (tf-text's decoder: see `in_graph`)."""
        return self._call("detokenize", ids)


def lost_resource(error: tf.errors.NotFoundError) -> bool:
    """Whether a NotFoundError says the SentencePiece resource is gone (see `SentencepieceOp`)."""
    return "Sentencepiece" in str(error)


def load_processor(model_proto: bytes) -> sentencepiece.SentencePieceProcessor:
    """The `sentencepiece` processor of `model_proto`, or an error saying that it is not a model."""
    if not isinstance(model_proto, bytes):
        raise TypeError(f"model_proto must be the bytes of a SentencePiece model, got {type(model_proto).__name__}")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError) as error:
        raise ValueError(f"model_proto is not a SentencePiece model ({error})") from None
    return processor


def anchor_id(processor: sentencepiece.SentencePieceProcessor) -> int:
    """Id of a normal piece that is one ASCII character (not "▁"): decodes to exactly one byte."""
    for piece_id in range(processor.get_piece_size()):
        piece = processor.id_to_piece(piece_id)
        normal = not (processor.is_control(piece_id) or processor.is_unknown(piece_id) or processor.is_byte(piece_id))
        if normal and len(piece) == 1 and piece.isascii():
            return piece_id
    raise ValueError("the SentencePiece model has no single-ASCII-character piece, which decoding relies on")
