"""Checks of what the Python API is given: text batches, sequences of token ids, padding and
truncation arguments. Each returns the value in the form the tokenizer uses, or raises an error
that names the offending item and position."""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tf_mistral.text_checks import check_text

_SIDES = ("left", "right")


def check_side(name: str, side: str) -> str:
    """`side` if it is "left" or "right", else a ValueError naming the argument `name`."""
    if side not in _SIDES:
        raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
    return side


def as_text_batch(text: str | bytes | Sequence[str | bytes]) -> tuple[list[str], bool]:
    """(the texts as a list of str, whether a single text was given)."""
    if isinstance(text, (str, bytes)):
        return [check_text(text, "text 0")], True
    if isinstance(text, (tf.Tensor, np.ndarray)):
        raise TypeError("pass Python strings here; for tf.string tensors use tokenize() or MistralPreprocessor")
    if not isinstance(text, (list, tuple)):
        raise TypeError(f"expected a str or a list of str, got {type(text).__name__}")
    return [check_text(item, f"text {i}") for i, item in enumerate(text)], False


def padding_mode(padding: bool | str | None, max_length: int | None) -> str | None:
    """None (no padding), "longest" or "max_length", from HF's `padding` argument."""
    if padding is False or padding is None or padding == "do_not_pad":
        return None
    if padding is True or padding == "longest":
        return "longest"
    if padding == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        return "max_length"
    raise ValueError(f"padding must be True/'longest', 'max_length' or False, got {padding!r}")


def as_id_rows(
    ids: Sequence[int] | Sequence[Sequence[int]] | np.ndarray | tf.Tensor | tf.RaggedTensor, vocab_size: int,
    single: bool,
) -> tf.RaggedTensor:
    """Validated int32 RaggedTensor [batch, None] from tensors, arrays or lists of ints.

    ids: a list of ints or of int lists, a numpy array or tf tensor of rank 1 or 2, or a RaggedTensor.
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
