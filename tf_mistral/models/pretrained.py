"""What every tf_mistral model shares: its `MistralConfig`, Keras (de)serialization, and the
Hugging Face `from_pretrained` / `save_pretrained` pair."""

import keras

from tf_mistral.config import MistralConfig


class MistralPreTrainedModel(keras.Model):
    """Base of the backbone and the heads. Subclasses create their layers in `__init__` and
    build them, from shapes alone, in `build()`, so that a 7B model is built without running it."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = MistralConfig(**config)
        if not isinstance(config, MistralConfig):
            raise TypeError(f"config must be a MistralConfig or a dict, got {type(config).__name__}")
        self.config = config

    def get_config(self):
        return {"name": self.name, "dtype": keras.dtype_policies.serialize(self.dtype_policy),
                "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model_config = MistralConfig.from_dict(config.pop("config"))
        dtype = config.pop("dtype", None)
        if isinstance(dtype, dict):
            dtype = keras.dtype_policies.deserialize(dtype)
        model = cls(model_config, dtype=dtype, **config)
        model.build()
        return model

    @classmethod
    def from_pretrained(cls, path, dtype=None, progress=True, **config_overrides):
        """Loads a Hugging Face checkpoint folder (config.json + safetensors).

        Args:
            path: folder with `config.json` and `model.safetensors` or sharded safetensors with
                `model.safetensors.index.json`.
            dtype: a Keras dtype policy name ("float32", "bfloat16", "mixed_bfloat16", ...);
                default: the checkpoint's `torch_dtype`.
            progress: show a progress bar over the tensors.
            **config_overrides: MistralConfig fields to change (e.g. `num_labels=3`).
        """
        from tf_mistral import checkpoint

        config = MistralConfig.from_json_file(path)
        if config_overrides:
            config = MistralConfig.from_dict({**config.to_dict(), **config_overrides})
        model = cls(config, dtype=dtype or config.torch_dtype)
        checkpoint.load_weights(model, path, progress=progress)  # builds the model
        return model

    def save_pretrained(self, path, max_shard_size="5GB", dtype=None, progress=True):
        """Writes `config.json` and safetensors (sharded above `max_shard_size`, with an index)
        that HF transformers loads; `dtype` converts the weights ("bfloat16", "float16", ...)."""
        from tf_mistral import checkpoint

        checkpoint.save_weights(self, path, max_shard_size=max_shard_size, dtype=dtype, progress=progress)
