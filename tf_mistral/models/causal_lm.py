"""`TFMistralForCausalLM`: the backbone and an `lm_head` (or, tied, the embedding matrix)."""

from typing import Any

import keras
from keras import ops

from tf_mistral import cache as kv_cache
from tf_mistral.config import MistralConfig
from tf_mistral.generation.generate import GenerationMixin
from tf_mistral.models import head_losses
from tf_mistral.models.backbone import TFMistralModel
from tf_mistral.models.outputs import ModelOutput
from tf_mistral.models.pretrained import MistralPreTrainedModel
from tf_mistral.models.text_io import TextMixin
from tf_mistral.training.trainer import TrainingMixin


@keras.saving.register_keras_serializable(package="tf_mistral")
class TFMistralForCausalLM(TextMixin, TrainingMixin, GenerationMixin, MistralPreTrainedModel):
    """`input_ids [batch, seq]` -> `logits [batch, seq, vocab]` (compute dtype); with a `preprocessor`,
    strings in `generate` / `predict` (`TextMixin`)."""

    hf_architecture = "MistralForCausalLM"
    training_task = "causal_lm"  # compile() defaults: shifted next-token loss, -100 ignored

    def __init__(self, config: MistralConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.model = TFMistralModel(self.config, name="model", dtype=self.dtype_policy)
        self.lm_head = None  # tied: the logits read the embedding matrix (`_logits`)
        if not self.config.tie_word_embeddings:
            self.lm_head = keras.layers.Dense(
                self.config.vocab_size, use_bias=False, name="lm_head", dtype=self.dtype_policy
            )

    def build(self, input_shape: Any = None) -> None:
        self.model.build()
        if self.lm_head is not None:
            self.lm_head.build((None, None, self.config.hidden_size))
        self.built = True

    def _logits(self, hidden):
        """`hidden [..., hidden]` -> logits `[..., vocab]`, compute dtype: `lm_head`, or with
        tied embeddings the embedding matrix `[vocab, hidden]` transposed (Keras int8: its int8
        rows divided by their scales `[vocab]`, as the Embedding's own lookup does)."""
        if self.lm_head is None:
            embed = self.model.embed_tokens
            embeddings = ops.cast(embed.embeddings, self.compute_dtype)
            if embed.quantization_mode == "int8":
                embeddings = ops.divide(embeddings, ops.cast(embed.embeddings_scale, self.compute_dtype)[:, None])
            return ops.matmul(hidden, ops.transpose(embeddings))
        return self.lm_head(hidden)

    def call(
        self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
        past_key_values: tuple[tuple[Any, Any], ...] | None = None, inputs_embeds: Any = None, labels: Any = None,
        use_cache: bool | None = None, output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """Logits for every position; arguments as `TFMistralModel.call`, plus `labels`: int
        `[batch, seq]` aligned with the inputs (-100: not scored), shifted here as HF does; the
        output then starts with `loss`, the float32 mean cross-entropy of the scored tokens.
        Returns `ModelOutput(loss, logits [batch, seq, vocab], past_key_values, hidden_states,
        attentions)`, each optional entry when asked."""
        backbone = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        logits = self._logits(backbone.last_hidden_state)
        loss = None if labels is None else head_losses.causal_lm_loss(labels, logits)
        return self.head_output(loss, logits, backbone, return_dict)

    def forward_with_cache(
        self, input_ids: Any, cache: list[tuple[Any, Any]], start: Any, pad_start: Any = None, last_only: bool = True,
        cache_writes: str = kv_cache.SLICE_WRITES,
    ) -> tuple[Any, list[tuple[Any, Any]]]:
        """Logits for a chunk run against the cache: `[batch, 1, vocab]` for its last token when
        `last_only`, else `[batch, seq, vocab]`; see `TFMistralModel.forward_with_cache`."""
        hidden, cache = self.model.forward_with_cache(input_ids, cache, start, pad_start, last_only, cache_writes)
        return self._logits(hidden), cache
