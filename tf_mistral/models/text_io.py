"""KerasHub's habits for a causal LM: an attached preprocessor, so that `generate` and `predict`
take raw strings, and `score()` (logits or per-token loss of given ids, with a layer hook)."""

from collections.abc import Callable, Sequence
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_mistral.generation.outputs import GenerateOutput
from tf_mistral.tokenizer import MistralPreprocessor, MistralTokenizer


def is_text(inputs: Any) -> bool:
    """Whether `inputs` is a str or a non-empty list / tuple / numpy array of str."""
    if isinstance(inputs, str):
        return True
    if isinstance(inputs, np.ndarray):
        return inputs.dtype.kind in "UO" and inputs.size > 0 and all(isinstance(x, str) for x in inputs.flat)
    return isinstance(inputs, (list, tuple)) and len(inputs) > 0 and all(isinstance(x, str) for x in inputs)


def as_preprocessor(
    preprocessor: bool | str | MistralTokenizer | MistralPreprocessor, path: str | os.PathLike | None
) -> MistralPreprocessor:
    """A `MistralPreprocessor` from what `from_pretrained(preprocessor=...)` takes: True (the
    tokenizer.model of `path`), a folder or .model file, a `MistralTokenizer`, or a preprocessor."""
    if isinstance(preprocessor, MistralPreprocessor):
        return preprocessor
    if isinstance(preprocessor, MistralTokenizer):
        return MistralPreprocessor(preprocessor)
    if preprocessor is True:
        return MistralPreprocessor(MistralTokenizer.from_pretrained(path))
    if isinstance(preprocessor, str):
        return MistralPreprocessor(MistralTokenizer.from_pretrained(preprocessor))
    raise TypeError(
        "preprocessor must be True, a tokenizer folder, a MistralTokenizer or a MistralPreprocessor, "
        f"got {preprocessor!r}"
    )


class TextMixin:
    """`preprocessor`, string `generate` / `predict`, `score` and `from_pretrained(preprocessor=...)`
    for `TFMistralForCausalLM`. The preprocessor is not a Keras sublayer: weights, saving and the
    compiled generation functions stay those of the model alone."""

    def __setattr__(self, name, value):
        if name == "preprocessor":  # past Keras' tracking (which refuses new state once built)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def preprocessor(self) -> MistralPreprocessor | None:
        """The attached `MistralPreprocessor`, or None (then inputs are token ids)."""
        return getattr(self, "_preprocessor", None)

    @preprocessor.setter
    def preprocessor(self, value: MistralPreprocessor | None) -> None:
        if value is not None and not isinstance(value, MistralPreprocessor):
            raise TypeError(f"preprocessor must be a MistralPreprocessor or None, got {type(value).__name__}")
        object.__setattr__(self, "_preprocessor", value)  # untracked by Keras (see the class docstring)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *args: Any,
        preprocessor: bool | str | MistralTokenizer | MistralPreprocessor | None = None, **kwargs: Any,
    ) -> keras.Model:
        """As `MistralPreTrainedModel.from_pretrained`, plus `preprocessor`: True attaches one with
        the checkpoint's tokenizer.model; also a tokenizer folder, a `MistralTokenizer` or a
        `MistralPreprocessor` (KerasHub's `CausalLM.from_preset` habit)."""
        model = super().from_pretrained(path, *args, **kwargs)
        if preprocessor is not None and preprocessor is not False:
            model.preprocessor = as_preprocessor(preprocessor, path)
        return model

    def _tokenizer_for_text(self):
        if self.preprocessor is None:
            raise ValueError(
                "this model has no preprocessor, so it takes token ids, not strings: load it with "
                "from_pretrained(path, preprocessor=True) or set model.preprocessor = MistralPreprocessor(tokenizer)"
            )
        return self.preprocessor.tokenizer

    def generate(
        self, input_ids: Any, *args: Any, **kwargs: Any
    ) -> np.ndarray | tf.Tensor | GenerateOutput | str | list[str]:
        """`GenerationMixin.generate`; with a preprocessor, `input_ids` may also be a str or a list
        of str, and the result is then the prompts followed by their continuations, as str (a list
        for a list), special tokens dropped (KerasHub's `CausalLM.generate`)."""
        if not is_text(input_ids):
            return super().generate(input_ids, *args, **kwargs)
        tokenizer = self._tokenizer_for_text()
        if kwargs.get("return_dict_in_generate"):
            raise ValueError("generate on strings returns strings: pass token ids for return_dict_in_generate")
        batch = tokenizer([input_ids] if isinstance(input_ids, str) else list(input_ids), padding=True,
                          padding_side="left", return_tensors="np")
        kwargs.setdefault("tokenizer", tokenizer)
        sequences = super().generate(batch["input_ids"], batch["attention_mask"], *args, **kwargs)
        texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return texts[0] if isinstance(input_ids, str) else texts

    def predict(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Keras `predict`; with a preprocessor, `x` may also be strings (run through it first)."""
        if is_text(x):
            x = self.preprocessor_outputs(x)
        return super().predict(x, *args, **kwargs)

    def preprocessor_outputs(self, texts: str | Sequence[str]) -> dict[str, tf.Tensor]:
        """The preprocessor's `input_ids` / `attention_mask` for a str or a list of str."""
        self._tokenizer_for_text()
        outputs = self.preprocessor(tf.constant([texts] if isinstance(texts, str) else list(texts), tf.string))
        return {"input_ids": outputs["input_ids"], "attention_mask": outputs["attention_mask"]}

    def score(
        self, token_ids: Any, padding_mask: Any = None, scoring_mode: str = "logits",
        layer_intercept_fn: Callable[[Any, int], Any] | None = None, target_ids: Any = None,
    ) -> tf.Tensor:
        """KerasHub's `CausalLM.score`: the logits of `token_ids`, or the loss of each token.

        Args:
            token_ids: int `[batch, seq]`.
            padding_mask: `[batch, seq]`, 0 for padding (either side); None: no padding.
            scoring_mode: "logits" or "loss".
            layer_intercept_fn: `fn(x, i)` on the embeddings (i = -1) and each decoder layer's
                output (i = 0 .. layers - 1); what it returns goes on. None: none.
            target_ids: int `[batch, seq]`, the token expected at each position (for "loss";
                KerasHub does not shift them: pass `token_ids` shifted left by one).

        Returns:
            "logits": `[batch, seq, vocab]` in the compute dtype; "loss": float32 `[batch, seq]`,
            the unreduced cross-entropy of `target_ids` (padding included, as KerasHub).
        """
        if scoring_mode not in ("logits", "loss"):
            raise ValueError(f'scoring_mode must be "logits" or "loss", got {scoring_mode!r}')
        if scoring_mode == "loss" and target_ids is None:
            raise ValueError('scoring_mode="loss" needs target_ids (token_ids shifted left by one)')
        hidden = self.model(
            token_ids, attention_mask=padding_mask, layer_intercept_fn=layer_intercept_fn
        ).last_hidden_state
        logits = self._logits(hidden)
        if scoring_mode == "logits":
            return logits
        return keras.losses.sparse_categorical_crossentropy(target_ids, tf.cast(logits, tf.float32), from_logits=True)
