"""Classification heads: one label per sequence, or one label per token."""

from typing import Any

import keras
from keras import ops

from tf_mistral.config import MistralConfig
from tf_mistral.models import head_losses
from tf_mistral.models.backbone import TFMistralModel, unpack_inputs
from tf_mistral.models.outputs import ModelOutput
from tf_mistral.models.pretrained import MistralPreTrainedModel
from tf_mistral.training.trainer import TrainingMixin


def last_token_index(hidden: Any, input_ids: Any, attention_mask: Any, pad_token_id: int | None) -> Any:
    """int32 `[batch]`: the rightmost real token of each row of `hidden [batch, seq, hidden]`,
    for left and right padding alike.

    Real tokens are those with `attention_mask == 1` (its last `seq` columns: it may also cover
    past tokens); without a mask, those of `input_ids` that are not `pad_token_id` (as HF does);
    without either (or with `inputs_embeds`), the last position.
    """
    batch, seq = ops.shape(hidden)[0], ops.shape(hidden)[1]
    if attention_mask is not None:
        real = ops.cast(attention_mask[:, -seq:], "int32")
    elif pad_token_id is not None and input_ids is not None:
        real = ops.cast(ops.not_equal(input_ids, pad_token_id), "int32")
    else:
        return ops.full((batch,), seq - 1, dtype="int32")
    return ops.cast(ops.argmax(real * ops.arange(seq, dtype="int32")[None], axis=-1), "int32")


@keras.saving.register_keras_serializable(package="tf_mistral")
class TFMistralForSequenceClassification(TrainingMixin, MistralPreTrainedModel):
    """`input_ids [batch, seq]` -> `logits [batch, num_labels]`; `score` has no bias (as HF)."""

    hf_architecture = "MistralForSequenceClassification"
    training_task = "sequence_classification"

    def __init__(self, config: MistralConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.model = TFMistralModel(self.config, name="model", dtype=self.dtype_policy)
        self.score = keras.layers.Dense(
            self.config.num_labels, use_bias=False, name="score", dtype=self.dtype_policy
        )

    def build(self, input_shape: Any = None) -> None:
        self.model.build()
        self.score.build((None, self.config.hidden_size))
        self.built = True

    def call(
        self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
        past_key_values: tuple[tuple[Any, Any], ...] | None = None, inputs_embeds: Any = None, labels: Any = None,
        use_cache: bool | None = None, output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """`ModelOutput(loss, logits [batch, num_labels], past_key_values, hidden_states, attentions)`,
        the optional entries when asked; arguments as `TFMistralModel.call`, plus `labels`:
        int `[batch]` classes, or float `[batch, num_labels]` for regression and multi-label
        classification (`head_losses.sequence_classification_loss`)."""
        input_ids, attention_mask = unpack_inputs(input_ids, attention_mask)
        backbone = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        hidden = backbone.last_hidden_state
        index = last_token_index(hidden, input_ids, attention_mask, self.config.pad_token_id)
        pooled = ops.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]  # [B, H]
        logits = self.score(pooled)
        loss = None if labels is None else head_losses.sequence_classification_loss(self.config, labels, logits)
        return self.head_output(loss, logits, backbone, return_dict)


@keras.saving.register_keras_serializable(package="tf_mistral")
class TFMistralForTokenClassification(TrainingMixin, MistralPreTrainedModel):
    """`input_ids [batch, seq]` -> `logits [batch, seq, num_labels]`; dropout, then `score`
    with a bias (HF's generic token-classification head)."""

    hf_architecture = "MistralForTokenClassification"
    training_task = "token_classification"

    def __init__(self, config: MistralConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        rate = 0.1 if self.config.classifier_dropout is None else self.config.classifier_dropout
        self.model = TFMistralModel(self.config, name="model", dtype=self.dtype_policy)
        self.dropout = keras.layers.Dropout(rate, name="dropout")
        self.score = keras.layers.Dense(self.config.num_labels, name="score", dtype=self.dtype_policy)

    def build(self, input_shape: Any = None) -> None:
        self.model.build()
        self.score.build((None, None, self.config.hidden_size))
        self.built = True

    def call(
        self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
        past_key_values: tuple[tuple[Any, Any], ...] | None = None, inputs_embeds: Any = None, labels: Any = None,
        use_cache: bool | None = None, output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        return_dict: bool | None = None, training: bool | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """`ModelOutput(loss, logits [batch, seq, num_labels], past_key_values, hidden_states,
        attentions)`, the optional entries when asked; arguments as `TFMistralModel.call`, plus
        `labels`: int `[batch, seq]`, -100 where not scored (mean cross-entropy, as HF)."""
        backbone = self.model(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        logits = self.score(self.dropout(backbone.last_hidden_state, training=training))
        loss = None if labels is None else head_losses.token_classification_loss(labels, logits)
        return self.head_output(loss, logits, backbone, return_dict)
