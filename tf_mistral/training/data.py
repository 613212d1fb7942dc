"""Training data: read text / JSONL, tokenize in-graph, pack or pad into batches, shuffle.

    examples = data.read_jsonl("train.jsonl")          # {"text": ...} or {"messages": [...]} per line
    train_ds = data.causal_lm_dataset(examples, tokenizer, sequence_length=512, batch_size=8)
    model.fit(train_ds, epochs=3)

Each batch is a dict of int32 `[batch, length]`: `input_ids`, `attention_mask`, `labels` (-100
where no loss is taken; the causal LM loss shifts the labels itself, as HF does).

- Plain text: `<s> text </s>`, every token trained.
- Chat (a list of {"role", "content"} messages): formatted with the tokenizer's Mistral chat
  template (`tf_mistral.chat`, identical to mistral-common), trained on the assistant turns only:
  each assistant reply and the `</s>` closing it carry labels, the prompts do not.
- `packing=True` (default): examples are concatenated into one stream and cut into rows of exactly
  `sequence_length` tokens (no padding; attention runs across the example boundaries inside a
  row, as in HF / TRL packing; each example starts with `<s>`, which is not trained on).
  `packing=False`: one example per row, truncated to `sequence_length`, right-padded to the end of
  its length bucket (multiples of 64 by default) so that batches of short examples stay short.
- Shuffling: a full shuffle of the examples each epoch, seeded. With `epoch=backup.epoch` (see
  `tf_mistral.training.resume`) the order is a function of `(seed, epoch)` alone, which is what
  lets an interrupted run resume mid-epoch on the very batch where it stopped.

Tokenization runs inside the tf.data graph (tensorflow-text), so it overlaps with training.
"""

from collections.abc import Iterable, Mapping, Sequence
import json
import os
from typing import Any

import tensorflow as tf
from tensorflow.python.data.ops import dataset_ops

from tf_mistral import chat
from tf_mistral.labels import IGNORE_INDEX
from tf_mistral.tokenizer import MistralTokenizer

BUCKET_STEP = 64


# ---- reading --------------------------------------------------------------------------------


def read_texts(paths: str | os.PathLike | Iterable[str | os.PathLike], split: str = "file") -> list[str]:
    """Plain-text examples from files: one per file ("file"), per blank-line-separated paragraph
    ("paragraph") or per non-empty line ("line"). `paths`: a path or a list of paths (UTF-8)."""
    if split not in ("file", "paragraph", "line"):
        raise ValueError(f"split must be 'file', 'paragraph' or 'line', got {split!r}")
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    examples = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if split == "file":
            pieces = [text]
        elif split == "paragraph":
            pieces = [p.strip("\n") for p in text.split("\n\n")]
        else:
            pieces = text.splitlines()
        examples.extend(p for p in pieces if p.strip())
    if not examples:
        raise ValueError(f"no text in {paths}")
    return examples


def read_jsonl(
    path: str | os.PathLike, text_key: str = "text", messages_key: str = "messages"
) -> list[str] | list[list[dict[str, Any]]]:
    """Examples from a JSON Lines file: each line an object with `text_key` (plain text) or
    `messages_key` (a chat: a list of {"role", "content"}). Returns a list of str or of message
    lists; a file must hold one kind only."""
    examples, kinds = [], set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not JSON ({error})") from None
            if isinstance(record, dict) and isinstance(record.get(messages_key), list):
                examples.append(record[messages_key])
                kinds.add("chat")
            elif isinstance(record, dict) and isinstance(record.get(text_key), str):
                examples.append(record[text_key])
                kinds.add("text")
            else:
                raise ValueError(f"{path}:{number} has neither a {text_key!r} string nor a {messages_key!r} list")
    if len(kinds) > 1:
        raise ValueError(f"{path} mixes text and chat records; put them in separate files")
    if not examples:
        raise ValueError(f"{path} has no records")
    return examples


# ---- tokenization (in-graph) ----------------------------------------------------------------


def _merge_assistant_runs(messages, index):
    """Validates one conversation (as mistral-common does) and merges consecutive assistant messages
    as the chat template does, so that each assistant turn is one message. -> (roles, contents)."""
    roles, contents = chat.check_conversation(messages, add_generation_prompt=False, index=index)
    merged_roles, merged = [], []
    for role, content in zip(roles, contents):
        if role == "assistant" and merged_roles and merged_roles[-1] == "assistant":
            merged[-1] = "\n\n".join(c for c in (merged[-1], content) if c)
        else:
            merged_roles.append(role)
            merged.append(content)
    return merged_roles, merged


def _text_example(tokenizer, texts):
    def encode(index):
        ids = tokenizer.tokenize(texts[index], add_special_tokens=False)
        ids = tf.concat([[tokenizer.bos_token_id], ids, [tokenizer.eos_token_id]], axis=0)
        labels = tf.concat([[IGNORE_INDEX], ids[1:]], axis=0)
        return {"input_ids": ids, "labels": labels}

    return encode


def assistant_mask(tokenizer: MistralTokenizer, ids: tf.Tensor, roles: tf.Tensor, contents: tf.Tensor) -> tf.Tensor:
    """bool `[tokens]`: which of a conversation's ids belong to assistant turns (reply + `</s>`).

    In both Mistral formats an assistant turn is encoded as `sp(reply) </s>` (v3 strips trailing
    spaces first) and `</s>` appears nowhere else; so the j-th `</s>` closes the j-th assistant
    turn, which is its last `len(sp(reply_j)) + 1` tokens.
    ids: int32 `[tokens]`; roles, contents: tf.string `[messages]` with assistant runs merged.
    """
    replies = tf.boolean_mask(contents, tf.equal(roles, "assistant"))
    if tokenizer.chat_format == "v3":
        replies = tf.strings.regex_replace(replies, " +$", "")
    lengths = tf.cast(tokenizer.tokenize(replies, add_special_tokens=False).row_lengths(), tf.int32) + 1
    ends = tf.cast(tf.where(tf.equal(ids, tokenizer.eos_token_id))[:, 0], tf.int32)  # [assistant turns]
    positions = tf.range(tf.size(ids))
    inside = (positions[None, :] <= ends[:, None]) & (positions[None, :] > ends[:, None] - lengths[:, None])
    return tf.reduce_any(inside, axis=0)


def _chat_example(tokenizer, roles, contents, train_on):
    def encode(index):
        ids = chat.encode_chat_tensors(tokenizer, roles[index], contents[index], add_generation_prompt=False)
        if train_on == "all":
            labels = tf.concat([[IGNORE_INDEX], ids[1:]], axis=0)
        else:
            labels = tf.where(assistant_mask(tokenizer, ids, roles[index], contents[index]), ids, IGNORE_INDEX)
        return {"input_ids": ids, "labels": labels}

    return encode


def _example_encoder(examples, tokenizer, train_on):
    """A function from an example's index (int64 scalar) to its `{"input_ids", "labels"}` [tokens]."""
    if not examples:
        raise ValueError("no examples")
    if all(isinstance(e, str) for e in examples):
        return _text_example(tokenizer, tf.constant(examples, tf.string))
    if all(isinstance(e, (list, tuple)) for e in examples):
        pairs = [_merge_assistant_runs(e, i) for i, e in enumerate(examples)]
        roles = tf.ragged.constant([r for r, _ in pairs], dtype=tf.string)
        contents = tf.ragged.constant([c for _, c in pairs], dtype=tf.string)
        return _chat_example(tokenizer, roles, contents, train_on)
    raise TypeError("examples must all be str (plain text) or all be conversations (lists of messages)")


# ---- batching -------------------------------------------------------------------------------


class _DeclaredLength(dataset_ops.UnaryUnchangedStructureDataset):
    """`dataset`, reporting `length` batches as its cardinality to Keras (tf.data has no public
    way to state the length of a dataset whose length it cannot infer)."""

    def __init__(self, dataset, length):
        self._length = length
        super().__init__(dataset, dataset._variant_tensor)

    def cardinality(self):
        return tf.constant(self._length, tf.int64)


def with_length(dataset: tf.data.Dataset, length: int | tf.Tensor) -> tf.data.Dataset:
    """`dataset`, telling Keras it has `length` batches (an int or int64 scalar) when its own
    cardinality differs: the length of a dataset tf.data cannot count (`ResumableBackup.dataset`),
    which a transformation of it (`map`) would otherwise lose."""
    length = int(length)
    return dataset if int(dataset.cardinality()) == length else _DeclaredLength(dataset, length)


def example_order(
    count: int, shuffle: bool, seed: int | None, epoch: int | tf.Tensor | tf.Variable | None
) -> tf.data.Dataset:
    """Dataset of example indices (int64) for one pass: in order, shuffled by tf.data at each pass
    (`epoch` None), or a permutation that depends on `(seed, epoch)` only (`epoch` an int, a tensor
    or a tf.Variable such as `ResumableBackup.epoch`, read when each pass starts)."""
    if not shuffle:
        return tf.data.Dataset.range(count)
    if epoch is None:
        return tf.data.Dataset.range(count).shuffle(count, seed=seed, reshuffle_each_iteration=True)

    def permutation(_):  # runs when an epoch's iterator starts, so a tf.Variable epoch is read then
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
        return tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), key)
        )

    return tf.data.Dataset.from_tensors(0).flat_map(permutation)


def _packed(dataset, sequence_length, batch_size, drop_remainder):
    rows = dataset.unbatch().batch(sequence_length, drop_remainder=True)
    rows = rows.map(lambda row: {**row, "attention_mask": tf.ones_like(row["input_ids"])})
    return rows.batch(batch_size, drop_remainder=drop_remainder)


def bucket_lengths(sequence_length: int, step: int = BUCKET_STEP) -> list[int]:
    """Padded row lengths of the buckets: step, 2 * step, ..., and `sequence_length`."""
    return sorted({min(n, sequence_length) for n in range(step, sequence_length + step, step)})


def padded_batches(
    dataset: tf.data.Dataset, sequence_length: int, batch_size: int, pad_token_id: int, drop_remainder: bool = False,
    buckets: Sequence[int] | None = None, label_shape: list[int] | None = None,
) -> tf.data.Dataset:
    """Right-pads examples (dicts with `input_ids [n]`, optional `labels [n]`) into batches bucketed
    by length; adds `attention_mask`. `label_shape=[]` for one label per example (classification)."""
    buckets = buckets or bucket_lengths(sequence_length)
    dataset = dataset.map(lambda e: {**e, "attention_mask": tf.ones_like(e["input_ids"])})
    shapes = {"input_ids": [None], "attention_mask": [None]}
    values = {"input_ids": tf.constant(pad_token_id, tf.int32), "attention_mask": tf.constant(0, tf.int32)}
    if "labels" in dataset.element_spec:
        shapes["labels"] = [None] if label_shape is None else label_shape
        values["labels"] = tf.constant(IGNORE_INDEX, tf.int32)
    return dataset.bucket_by_sequence_length(
        lambda e: tf.shape(e["input_ids"])[0],
        bucket_boundaries=[length + 1 for length in buckets[:-1]] + [sequence_length + 1],
        bucket_batch_sizes=[batch_size] * (len(buckets) + 1),
        padded_shapes=shapes,
        padding_values=values,
        pad_to_bucket_boundary=True,
        drop_remainder=drop_remainder,
    )


def causal_lm_dataset(
    examples: Sequence[str] | Sequence[Sequence[Mapping[str, str]]],
    tokenizer: MistralTokenizer,
    sequence_length: int,
    batch_size: int,
    *,
    packing: bool = True,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int | tf.Tensor | tf.Variable | None = None,
    train_on: str = "assistant",
    drop_remainder: bool = True,
    buckets: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """A tf.data pipeline of causal LM batches (see the module docstring).

    Args:
        examples: list of str, or list of conversations (lists of {"role", "content"}).
        tokenizer: a `tf_mistral.tokenizer.MistralTokenizer`.
        sequence_length: row length (packing) or the longest row (padding); longer examples are
            truncated when not packing.
        batch_size: rows per batch (the global batch under a distribution strategy).
        packing: concatenate and cut into full rows (True), or pad one example per row (False).
        shuffle, seed: shuffle the examples each epoch with this seed.
        epoch: None (tf.data reshuffles at each pass), or an int / int64 tf.Variable (read as each
            pass starts): the order is then a function of (seed, epoch) only. Pass
            `ResumableBackup.epoch` for exact mid-epoch resumption.
        train_on: chats: "assistant" (default) or "all" tokens.
        drop_remainder: drop the last incomplete batch (keeps shapes static; needed for
            distribution strategies that split the batch).
        buckets: padded lengths when not packing; default multiples of 64 up to sequence_length.

    Returns:
        `tf.data.Dataset` of dicts of int32 `[batch_size, length]`: input_ids, attention_mask, labels.
    """
    if train_on not in ("assistant", "all"):
        raise ValueError(f"train_on must be 'assistant' or 'all', got {train_on!r}")
    if sequence_length < 2:
        raise ValueError(f"sequence_length must be at least 2, got {sequence_length}")
    encode = _example_encoder(examples, tokenizer, train_on)
    dataset = example_order(len(examples), shuffle, seed, epoch)
    dataset = dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if packing:
        dataset = _packed(dataset, sequence_length, batch_size, drop_remainder)
    else:
        dataset = dataset.map(lambda e: {k: v[:sequence_length] for k, v in e.items()})
        dataset = padded_batches(dataset, sequence_length, batch_size, tokenizer.pad_token_id, drop_remainder, buckets)
    return dataset.prefetch(tf.data.AUTOTUNE)


def sequence_classification_dataset(
    texts: Sequence[str], labels: Sequence[int], tokenizer: MistralTokenizer, sequence_length: int, batch_size: int,
    *, shuffle: bool = True, seed: int = 0, epoch: int | tf.Tensor | tf.Variable | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches `({"input_ids", "attention_mask"} [batch, length], labels int32 [batch])` for
    `TFMistralForSequenceClassification.fit`: `<s> text`, truncated, right-padded by length bucket."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    texts, labels = tf.constant(texts, tf.string), tf.constant(labels, tf.int32)
    dataset = example_order(len(texts), shuffle, seed, epoch).map(
        lambda i: {"input_ids": tokenizer.tokenize(texts[i])[:sequence_length], "labels": labels[i]},
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    dataset = padded_batches(
        dataset, sequence_length, batch_size, tokenizer.pad_token_id, drop_remainder, label_shape=[]
    )
    dataset = dataset.map(lambda b: ({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, b["labels"]))
    return dataset.prefetch(tf.data.AUTOTUNE)
