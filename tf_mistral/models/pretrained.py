"""What every tf_mistral model shares: its `MistralConfig`, Keras (de)serialization, the Hugging
Face `from_pretrained` / `save_pretrained` pair, and the model methods of HF's TF classes
(embeddings, `resize_token_embeddings`, `dummy_inputs`, `input_signature`, `prepare_tf_dataset`)."""

import json
import os
from typing import TYPE_CHECKING, Any

import keras
from keras import ops
import numpy as np

from tf_mistral import checkpoint, quantization
from tf_mistral.atomic import write_json
from tf_mistral.config import MistralConfig
from tf_mistral.models.outputs import ModelOutput
from tf_mistral.models.presets import PresetMixin

if TYPE_CHECKING:
    import tensorflow as tf

GENERATION_CONFIG = "generation_config.json"


def read_generation_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """`path/generation_config.json` as a dict, or None when the folder has none."""
    file = os.path.join(path, GENERATION_CONFIG)
    if not os.path.exists(file):
        return None
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def _resized_rows(matrix, rows):
    """float numpy `[rows, width]`: `matrix [old_rows, width]` cut or extended; new rows are the
    mean of the old ones (the expected value of HF's `mean_resizing` initialisation)."""
    if rows <= matrix.shape[0]:
        return matrix[:rows]
    fill = np.broadcast_to(matrix.mean(axis=0, dtype=np.float64), (rows - matrix.shape[0], matrix.shape[1]))
    return np.concatenate([matrix, fill.astype(matrix.dtype)], axis=0)


def _plain_tensors(*element):
    """A `tf.data` element (features, or features and labels) with each ragged row made a plain
    tensor, which `padded_batch` pads."""
    import tensorflow as tf

    element = element[0] if len(element) == 1 else element
    return tf.nest.map_structure(lambda t: t.to_tensor() if isinstance(t, tf.RaggedTensor) else t, element)


class MistralPreTrainedModel(PresetMixin, keras.Model):
    """Base of the backbone and the heads. Subclasses create their layers in `__init__` and
    build them, from shapes alone, in `build()`, so that a 7B model is built without running it."""

    main_input_name = "input_ids"

    def __init__(self, config: MistralConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = MistralConfig(**config)
        if not isinstance(config, MistralConfig):
            raise TypeError(f"config must be a MistralConfig or a dict, got {type(config).__name__}")
        self.config = config

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": keras.dtype_policies.serialize(self.dtype_policy),
                "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any] | MistralConfig) -> "MistralPreTrainedModel":
        """A built model from Keras' `get_config()` dict, or (as HF) from a `MistralConfig`."""
        if isinstance(config, MistralConfig):
            config = {"config": config.to_dict()}
        config = dict(config)
        model_config = MistralConfig.from_dict(config.pop("config"))
        dtype = config.pop("dtype", None)
        if isinstance(dtype, dict):
            dtype = keras.dtype_policies.deserialize(dtype)
        model = cls(model_config, dtype=dtype, **config)
        model.build()
        return model

    # ------------------------------------------------------------------------------------------
    # Outputs

    def format_output(self, output: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple[Any, ...]:
        """`output` (a `ModelOutput`), or its `to_tuple()` when `return_dict` (default
        `config.return_dict`) is False."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict else output.to_tuple()

    def head_output(
        self, loss: Any, logits: Any, backbone: ModelOutput, return_dict: bool | None
    ) -> ModelOutput | tuple[Any, ...]:
        """A head's output in HF's order: `loss` (when labels were given), `logits`, then what the
        backbone's output carries besides `last_hidden_state`."""
        output = ModelOutput() if loss is None else ModelOutput(loss=loss)
        output["logits"] = logits
        output.update((k, v) for k, v in backbone.items() if k != "last_hidden_state")
        return self.format_output(output, return_dict)

    # ------------------------------------------------------------------------------------------
    # HF's model methods

    def _backbone(self):
        """The `TFMistralModel` (the model itself for a bare backbone; a method, not a property,
        so that Keras' saving walk over attributes meets no cycle)."""
        return getattr(self, "model", self)

    def get_input_embeddings(self) -> keras.layers.Embedding:
        """The token embedding layer, `keras.layers.Embedding [vocab, hidden]`."""
        return self._backbone().embed_tokens

    def set_input_embeddings(self, value: Any) -> None:
        """Replaces the token embeddings with `value`: a built `keras.layers.Embedding` of width
        `hidden_size`, or a float matrix `[vocab, hidden]`; `config.vocab_size` follows."""
        if not isinstance(value, keras.layers.Layer):
            self._replace_layer(self._backbone(), "embed_tokens", keras.ops.convert_to_numpy(value))
            return
        if value.output_dim != self.config.hidden_size:
            raise ValueError(f"embeddings of width {value.output_dim} do not fit hidden_size {self.config.hidden_size}")
        self._swap_sublayer(self._backbone(), "embed_tokens", value)
        self.config.vocab_size = value.input_dim

    def get_output_embeddings(self) -> keras.layers.Layer | None:
        """The causal LM's `lm_head` Dense layer (kernel `[hidden, vocab]`), its embedding layer
        when `config.tie_word_embeddings`; None for the other models."""
        if not hasattr(self, "lm_head"):
            return None
        return self.get_input_embeddings() if self.lm_head is None else self.lm_head

    def resize_token_embeddings(self, new_num_tokens: int | None = None) -> keras.layers.Embedding:
        """Gives the vocabulary `new_num_tokens` rows (as HF): the embeddings, and the `lm_head`
        of an untied causal LM, are cut or extended; new rows (and lm_head columns) start as the mean
        of the old ones. Sets `config.vocab_size`; returns the embedding layer."""
        if new_num_tokens is None or new_num_tokens == self.config.vocab_size:
            return self.get_input_embeddings()
        if new_num_tokens <= 0:
            raise ValueError(f"new_num_tokens must be positive, got {new_num_tokens}")
        embeddings = keras.ops.convert_to_numpy(self.get_input_embeddings().embeddings)
        self._replace_layer(self._backbone(), "embed_tokens", _resized_rows(embeddings, new_num_tokens))
        head = getattr(self, "lm_head", None)  # None for tied embeddings: the head follows them
        if head is not None:
            kernel = keras.ops.convert_to_numpy(head.kernel)  # [hidden, vocab]
            self._replace_layer(self, "lm_head", _resized_rows(kernel.T, new_num_tokens).T)
        self.config.vocab_size = new_num_tokens
        return self.get_input_embeddings()

    def _replace_layer(self, owner, name, value):
        """Puts a new built layer of the same kind as `owner.<name>` there, holding `value`
        (embeddings `[vocab, hidden]` or a Dense kernel `[hidden, vocab]`)."""
        old = getattr(owner, name)
        if isinstance(old, keras.layers.Embedding):
            new = keras.layers.Embedding(value.shape[0], value.shape[1], name=old.name, dtype=old.dtype_policy)
            new.build((None, None))
            new.embeddings.assign(value.astype(new.embeddings.dtype))
            self.config.vocab_size = value.shape[0]
        else:
            new = keras.layers.Dense(value.shape[1], use_bias=False, name=old.name, dtype=old.dtype_policy)
            new.build((None, None, value.shape[0]))
            new.kernel.assign(value.astype(new.kernel.dtype))
        self._swap_sublayer(owner, name, new)

    @staticmethod
    def _swap_sublayer(owner, name, new):
        """`owner.<name> = new` on a built layer (Keras locks a built layer's state; the old
        sublayer is untracked first, so its variables leave `weights`)."""
        owner._tracker.untrack(getattr(owner, name))
        delattr(owner, name)
        owner._tracker.unlock()
        try:
            setattr(owner, name, new)
        finally:
            owner._tracker.lock()

    @property
    def dummy_inputs(self) -> dict[str, Any]:
        """A small batch to build or trace the model with, as HF's TF classes: int32 `input_ids`
        `[3, 5]`."""
        return {"input_ids": ops.convert_to_tensor([[7, 6, 0, 0, 1], [1, 2, 3, 0, 0], [0, 0, 0, 4, 5]], "int32")}

    @property
    def input_signature(self) -> "dict[str, tf.TensorSpec]":
        """`tf.TensorSpec`s of the inputs, as HF's TF classes: int32 `[batch, seq]` `input_ids`
        and `attention_mask`."""
        import tensorflow as tf

        return {name: tf.TensorSpec((None, None), tf.int32, name=name) for name in ("input_ids", "attention_mask")}

    def prepare_tf_dataset(
        self, dataset: Any, batch_size: int = 8, shuffle: bool = True, drop_remainder: bool = False,
        seed: int | None = None,
    ) -> "tf.data.Dataset":
        """A `tf.data.Dataset` of padded batches for `fit` / `predict`, as HF's method makes from
        a `datasets.Dataset`.

        Args:
            dataset: rows as dicts (a `datasets.Dataset`, a list of dicts) or a dict of columns,
                with `input_ids` (lists of ints), optionally `attention_mask` and `labels`;
                other columns are dropped, as HF drops what `call` does not take.
            batch_size, shuffle, drop_remainder, seed: batching; shuffling covers the whole set.

        Returns:
            Batches `{"input_ids", "attention_mask"}` int32 `[batch, longest]`, right-padded with
            `config.pad_token_id` (0 without one) and mask 0, paired with `labels` (per-token
            labels padded with -100) when the rows have them.
        """
        import tensorflow as tf

        columns = dataset if isinstance(dataset, dict) else {k: [row[k] for row in dataset] for k in dataset[0]}
        if "input_ids" not in columns:
            raise ValueError(f"the dataset has no input_ids column; it has {sorted(columns)}")
        features = {"input_ids": tf.ragged.constant(columns["input_ids"], tf.int32)}
        features["attention_mask"] = (
            tf.ragged.constant(columns["attention_mask"], tf.int32) if "attention_mask" in columns
            else tf.ones_like(features["input_ids"])
        )
        elements = (features, tf.ragged.constant(columns["labels"])) if "labels" in columns else features
        data = tf.data.Dataset.from_tensor_slices(elements)
        if shuffle:
            data = data.shuffle(len(columns["input_ids"]), seed=seed)
        data = data.map(_plain_tensors)
        pad = self.config.pad_token_id or 0
        padding = {"input_ids": pad, "attention_mask": 0}
        if "labels" in columns:
            padding = (padding, tf.constant(-100, data.element_spec[1].dtype))
        return data.padded_batch(batch_size, padding_values=padding, drop_remainder=drop_remainder)

    # ------------------------------------------------------------------------------------------
    # Hugging Face folders

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: str | None = None, progress: bool = True,
        ignore_mismatched_sizes: bool = False, from_pt: bool = False, from_tf: bool = False,
        quantize: str | None = None, **config_overrides: Any,
    ) -> "MistralPreTrainedModel":
        """Loads a Hugging Face checkpoint folder (config.json + safetensors).

        Args:
            path: folder with `config.json` and `model.safetensors` or sharded safetensors with
                `model.safetensors.index.json`.
            dtype: a Keras dtype policy name ("float32", "bfloat16", "mixed_bfloat16", ...);
                default: the checkpoint's `torch_dtype`.
            progress: show a progress bar over the tensors.
            ignore_mismatched_sizes: a head whose shape differs from the checkpoint's (e.g.
                `num_labels=5` on a 3-label classifier) is re-initialised, with a warning;
                False: such a mismatch raises `CheckpointError` naming the tensor.
            from_pt, from_tf: accepted for HF compatibility and ignored (safetensors are read
                whichever framework wrote them).
            quantize: "int8" builds the model Keras' `model.quantize("int8")` would give (the same
                int8 `Dense` / `Embedding` variables, dtype policies and config, so saving,
                `fit`, LoRA and `generate` behave as Keras documents), quantizing each tensor
                as it is read: no float copy of the model is ever held (at 7B, about half the
                bf16 load's memory). `dtype` is the float policy it quantizes from, as for
                `quantize()` after loading (float16 is refused, as Keras refuses it).
            **config_overrides: MistralConfig fields to set after reading config.json, as HF
                does (`num_labels=5` resizes `id2label`); other names go to `config.extra`.
        """
        del from_pt, from_tf
        config = MistralConfig.from_json_file(path)
        for name, value in config_overrides.items():
            if hasattr(config, name):
                setattr(config, name, value)
            else:
                config.extra[name] = value
        config.validate()
        model = cls(config, dtype=dtype or config.torch_dtype)
        quantization.check_mode(quantize, model.compute_dtype)
        if quantize:
            quantization.quantize_when_built(model, quantize)
        checkpoint.load_weights(model, path, progress=progress, ignore_mismatched_sizes=ignore_mismatched_sizes)
        generation_config = read_generation_config(path)
        if hasattr(model, "generation_config") and generation_config is not None:
            model.generation_config = generation_config  # generate's defaults (a causal LM)
        return model

    def save_pretrained(
        self, path: str | os.PathLike, max_shard_size: int | str = "5GB", dtype: str | None = None,
        progress: bool = True, saved_model: bool = False,
    ) -> None:
        """Writes `config.json` and safetensors (sharded above `max_shard_size`, with an index)
        that HF transformers loads; `dtype` converts the weights ("bfloat16", "float16", ...).
        A causal LM also writes `generation_config.json`. `saved_model=True` also writes a
        TensorFlow SavedModel of the forward pass under `path/saved_model/1`, as HF's TF classes
        did: signature `serving_default(input_ids, attention_mask)` (int32 `[batch, seq]`) ->
        `logits`."""
        checkpoint.save_weights(self, path, max_shard_size=max_shard_size, dtype=dtype, progress=progress)
        if hasattr(self, "generation_config"):
            write_json(os.path.join(path, GENERATION_CONFIG), dict(self.generation_config))
        if saved_model:
            self._write_saved_model(os.path.join(path, "saved_model", "1"))

    def _write_saved_model(self, directory):
        """The forward pass as a SavedModel at `directory` (Keras' `ExportArchive`)."""
        archive = keras.export.ExportArchive()
        archive.track(self)

        def serving(input_ids, attention_mask):
            output = self(input_ids, attention_mask=attention_mask, return_dict=True)
            name = next(iter(output))  # logits, or a backbone's last_hidden_state
            return {name: output[name]}

        archive.add_endpoint("serving_default", serving, input_signature=list(self.input_signature.values()))
        archive.write_out(directory, verbose=False)
