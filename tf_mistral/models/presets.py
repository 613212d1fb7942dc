"""KerasHub's `Model.from_preset(preset, load_weights=True)` on every tf_mistral model, without
downloads.

KerasHub takes a preset name (downloaded from Kaggle or Hugging Face) or a local folder.
tf_mistral downloads nothing, so a name (`tf_mistral.PRESETS`) gives only a shape: with
`load_weights=False`, KerasHub's random-weights model; with weights, an error that says where to
get the folder. A local Hugging Face folder is read by `from_pretrained`, and a causal LM also
gets the folder's tokenizer as its preprocessor, as KerasHub's causal LMs come with theirs.
"""

import dataclasses
import os
from typing import Any

import keras

from tf_mistral.config import PRESETS, MistralConfig
from tf_mistral.models.text_io import as_preprocessor


def _has_tokenizer(folder):
    """Whether `folder` holds a SentencePiece tokenizer.model (or tokenizer.model.vN)."""
    return any(name == "tokenizer.model" or name.startswith("tokenizer.model.v") for name in os.listdir(folder))


class PresetMixin:
    """`from_preset` for `MistralPreTrainedModel`."""

    @classmethod
    def from_preset(
        cls, preset: str | os.PathLike, load_weights: bool = True, **kwargs: Any
    ) -> keras.Model:
        """KerasHub's `from_preset` for a local folder, or a preset name without weights.

        Args:
            preset: a Hugging Face checkpoint folder (config.json and safetensors), or a name of
                `tf_mistral.PRESETS` (e.g. "mistral_7b_v0.1") with `load_weights=False`.
            load_weights: False: random weights of the preset's or the folder's shape.
            **kwargs: with weights, `from_pretrained`'s (dtype, progress, MistralConfig fields);
                without, `dtype` and MistralConfig fields.

        Returns:
            The built model; a causal LM from a folder holding a tokenizer.model has it attached
            as `preprocessor` (strings in `generate` / `predict`).
        """
        preset = os.fspath(preset)
        if os.path.isdir(preset):
            if load_weights:
                model = cls.from_pretrained(preset, **kwargs)
            else:
                dtype = kwargs.pop("dtype", None)
                model = cls._random(dataclasses.replace(MistralConfig.from_json_file(preset), **kwargs), dtype)
            if hasattr(cls, "preprocessor") and _has_tokenizer(preset):
                model.preprocessor = as_preprocessor(True, preset)
            return model
        if preset not in PRESETS:
            raise ValueError(
                f"{preset!r} is neither a local folder nor a preset name ({', '.join(sorted(PRESETS))}); "
                "tf_mistral downloads nothing (no kaggle:// or hf:// handles): download the checkpoint "
                "folder and pass its path"
            )
        if load_weights:
            raise ValueError(
                f"preset {preset!r} is a shape without weights: tf_mistral downloads nothing. Download "
                "its Hugging Face folder and pass from_preset(folder), or pass load_weights=False for "
                "random weights of that shape"
            )
        dtype = kwargs.pop("dtype", None)
        return cls._random(MistralConfig.from_preset(preset, **kwargs), dtype)

    @classmethod
    def _random(cls, config, dtype):
        """A built model of `config` with freshly initialised weights."""
        model = cls(config, dtype=dtype)
        model.build()
        return model
