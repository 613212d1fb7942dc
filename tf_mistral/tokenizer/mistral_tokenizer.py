"""`MistralTokenizer`: the HF-style Python API (`tok(texts)`, `decode`, `batch_decode`,
`apply_chat_template`) over the in-graph ops of `InGraphTokenizer`, and its constructors from a
checkpoint folder, a .model file, mistral-common's tokenizers or a config.

Inputs must be valid UTF-8: the Python API raises on anything else.
"""

import base64
from collections.abc import Sequence
import functools
import os
from typing import Any

import numpy as np
import tensorflow as tf

from tf_mistral import chat
from tf_mistral.tokenizer.files import default_model_proto, find_model_file
from tf_mistral.tokenizer.in_graph import InGraphTokenizer
from tf_mistral.tokenizer.inputs import as_id_rows, as_text_batch, check_side, padding_mode
from tf_mistral.tokenizer.sentencepiece_op import lost_resource

Conversation = Sequence[dict[str, str]]


class MistralTokenizer(InGraphTokenizer):
    """SentencePiece tokenizer for Mistral-7B, HF-style calls over in-graph ops.

    Constructor arguments: those of `InGraphTokenizer` (`model_proto` bytes, `add_bos=True`,
    `add_eos=False`, `pad_token_id=0`, `padding_side="left"`, `chat_format=None` for the
    vocabulary's own); usually built by `from_pretrained` or `default`. The in-graph methods
    (`tokenize`, `detokenize`, `pad`, `truncate`, `add_special_tokens`) come from there too.

    Example:
        tok = MistralTokenizer.from_pretrained("path/to/ckpt")
        batch = tok(["My favourite condiment is", "Hi"], return_tensors="tf", padding=True)
        texts = tok.batch_decode(generated_ids, skip_special_tokens=True)
    """

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, **kwargs: Any) -> "MistralTokenizer":
        """Load tokenizer.model from a checkpoint folder (or a .model file); no path: `default("v1")`."""
        if path is None:
            return cls.default("v1", **kwargs)
        return cls(find_model_file(path).read_bytes(), **kwargs)

    @classmethod
    def default(cls, version: str = "v1", **kwargs: Any) -> "MistralTokenizer":
        """The real Mistral tokenizer shipped in mistral-common: "v1" (7B v0.1/v0.2) or "v3" (v0.3)."""
        return cls(default_model_proto(version), **kwargs)

    def get_config(self) -> dict:
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
    def from_config(cls, config: dict) -> "MistralTokenizer":
        """The tokenizer `get_config` describes."""
        config = dict(config)
        return cls(base64.b64decode(config.pop("model_proto")), **config)

    # ---- Python API -----------------------------------------------------------------------------

    def __call__(
        self,
        text: str | bytes | Sequence[str | bytes],
        *,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        truncation_side: str | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = None,
    ) -> dict:
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
        texts, single = as_text_batch(text)
        mode = padding_mode(padding, max_length)
        padding_side = check_side("padding_side", padding_side or self.padding_side)
        texts = tf.constant(texts, tf.string, shape=[len(texts)])
        if truncation:
            ids = self._truncated(texts, max_length, truncation_side or padding_side, add_special_tokens)
        else:
            ids = self.tokenize(texts, add_special_tokens)
            self._check_max_length(ids, max_length)
        return self._batch_output(ids, single, mode, max_length, pad_to_multiple_of, padding_side, return_tensors)

    def encode(self, text: str | bytes, add_special_tokens: bool = True) -> list[int]:
        """One str -> list of ids."""
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"encode takes one str, got {type(text).__name__}; call the tokenizer for a batch")
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: Sequence[int] | np.ndarray | tf.Tensor, skip_special_tokens: bool = False) -> str:
        """One sequence of ids (list, numpy, tf tensor) -> str."""
        rows = as_id_rows(ids, self.vocab_size, single=True)
        return self._decode_rows(rows, skip_special_tokens)[0].decode("utf-8")

    def batch_decode(
        self, sequences: Sequence[Sequence[int]] | np.ndarray | tf.Tensor | tf.RaggedTensor,
        skip_special_tokens: bool = False,
    ) -> list[str]:
        """A batch of id sequences ([batch, len] tensor/array, RaggedTensor, list of lists) -> list of str.

        Padding is `pad_token_id`: dropped with `skip_special_tokens`, else written as its piece.
        """
        rows = as_id_rows(sequences, self.vocab_size, single=False)
        return [text.decode("utf-8") for text in self._decode_rows(rows, skip_special_tokens)]

    def _decode_rows(self, rows, skip_special_tokens):
        """Bytes [batch] of int32 RaggedTensor rows, through `_traced_detokenize`."""
        try:
            return self._traced_detokenize[bool(skip_special_tokens)](rows).numpy()
        except tf.errors.NotFoundError as error:
            if not lost_resource(error):
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
        conversation: Conversation | Sequence[Conversation],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        return_tensors: str | None = None,
        return_dict: bool = False,
        padding_side: str | None = None,
    ) -> list[int] | list[list[int]] | np.ndarray | tf.Tensor | dict[str, Any]:
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
            padding_side: "left" or "right" for a batch (default: `self.padding_side`).

        Returns:
            the ids ([len] list for one chat with return_tensors=None, else [batch, len]), or with
            `return_dict` the dict. See `tf_mistral.chat` for the format.
        """
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
        padding_side = check_side("padding_side", padding_side or self.padding_side)
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


def _round_up(length, multiple):
    return length if not multiple else -(-length // multiple) * multiple
