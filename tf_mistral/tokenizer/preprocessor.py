"""`MistralPreprocessor`: the Keras layer that turns strings into fixed-length model inputs,
in-graph (`dataset.map`, a SavedModel, or the first layer of a model)."""

from typing import Any

import keras
import tensorflow as tf

from tf_mistral.labels import IGNORE_INDEX
from tf_mistral.tokenizer.inputs import check_side
from tf_mistral.tokenizer.mistral_tokenizer import MistralTokenizer


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
        self,
        tokenizer: MistralTokenizer | None = None,
        sequence_length: int = 512,
        padding_side: str = "right",
        add_labels: bool = False,
        add_eos: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tokenizer = tokenizer or MistralTokenizer.default("v1")
        self.sequence_length = int(sequence_length)
        self.padding_side = check_side("padding_side", padding_side)
        self.add_labels = bool(add_labels)
        self.add_eos = self.add_labels if add_eos is None else bool(add_eos)
        n_special = self.tokenizer.add_bos + self.add_eos
        if self.sequence_length < n_special:
            raise ValueError(f"sequence_length={sequence_length} leaves no room for the {n_special} special tokens")
        self.built = True

    def call(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
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

    def compute_output_spec(self, texts: keras.KerasTensor) -> dict[str, keras.KerasTensor]:
        shape = tuple(texts.shape) + (self.sequence_length,)
        names = ["input_ids", "attention_mask"] + ["labels"] * self.add_labels
        return {name: keras.KerasTensor(shape, dtype="int32") for name in names}

    def get_config(self) -> dict:
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
    def from_config(cls, config: dict) -> "MistralPreprocessor":
        config = dict(config)
        config["tokenizer"] = MistralTokenizer.from_config(config["tokenizer"])
        return cls(**config)
