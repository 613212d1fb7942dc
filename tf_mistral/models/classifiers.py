"""Classification heads: one label per sequence, or one label per token."""

import keras
from keras import ops

from tf_mistral.models.backbone import TFMistralModel, unpack_inputs
from tf_mistral.models.outputs import ModelOutput
from tf_mistral.models.pretrained import MistralPreTrainedModel
from tf_mistral.training.trainer import TrainingMixin


def last_token_index(input_ids, attention_mask, pad_token_id):
    """int32 `[batch]`: the rightmost real token of each row, for left and right padding alike.

    Real tokens are those with `attention_mask == 1`; without a mask, those that are not
    `pad_token_id` (as HF does); without either, the last position.
    """
    seq = ops.shape(input_ids)[1]
    if attention_mask is not None:
        real = ops.cast(attention_mask, "int32")
    elif pad_token_id is not None:
        real = ops.cast(ops.not_equal(input_ids, pad_token_id), "int32")
    else:
        return ops.full((ops.shape(input_ids)[0],), seq - 1, dtype="int32")
    return ops.cast(ops.argmax(real * ops.arange(seq, dtype="int32")[None], axis=-1), "int32")


@keras.saving.register_keras_serializable(package="tf_mistral")
class TFMistralForSequenceClassification(TrainingMixin, MistralPreTrainedModel):
    """`input_ids [batch, seq]` -> `logits [batch, num_labels]`; `score` has no bias (as HF)."""

    hf_architecture = "MistralForSequenceClassification"
    training_task = "sequence_classification"

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.model = TFMistralModel(self.config, name="model", dtype=self.dtype_policy)
        self.score = keras.layers.Dense(
            self.config.num_labels, use_bias=False, name="score", dtype=self.dtype_policy
        )

    def build(self, input_shape=None):
        self.model.build()
        self.score.build((None, self.config.hidden_size))
        self.built = True

    def call(self, input_ids, attention_mask=None):
        input_ids, attention_mask = unpack_inputs(input_ids, attention_mask)
        hidden = self.model(input_ids, attention_mask=attention_mask).last_hidden_state
        index = last_token_index(input_ids, attention_mask, self.config.pad_token_id)
        pooled = ops.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]  # [B, H]
        return ModelOutput(logits=self.score(pooled))


@keras.saving.register_keras_serializable(package="tf_mistral")
class TFMistralForTokenClassification(TrainingMixin, MistralPreTrainedModel):
    """`input_ids [batch, seq]` -> `logits [batch, seq, num_labels]`; dropout, then `score`
    with a bias (HF's generic token-classification head)."""

    hf_architecture = "MistralForTokenClassification"
    training_task = "token_classification"

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        rate = 0.1 if self.config.classifier_dropout is None else self.config.classifier_dropout
        self.model = TFMistralModel(self.config, name="model", dtype=self.dtype_policy)
        self.dropout = keras.layers.Dropout(rate, name="dropout")
        self.score = keras.layers.Dense(self.config.num_labels, name="score", dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.model.build()
        self.score.build((None, None, self.config.hidden_size))
        self.built = True

    def call(self, input_ids, attention_mask=None, training=None):
        hidden = self.model(input_ids, attention_mask=attention_mask).last_hidden_state
        return ModelOutput(logits=self.score(self.dropout(hidden, training=training)))
