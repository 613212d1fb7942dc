"""`MistralConfig`: the model's hyper-parameters, read from and written to HF `config.json`.

Both forms of `config.json` are read: the hub form (`rope_theta`, `torch_dtype`) that the
mistralai checkpoints carry, and the transformers v5 form (`rope_parameters.rope_theta`, `dtype`).
`to_dict()` writes the hub form by default, which every transformers version reads.
"""

from collections.abc import Mapping
import dataclasses
import json
import os
from typing import Any

from tf_mistral.atomic import write_json

_PRESET_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=32768,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    torch_dtype="bfloat16",
)

# Values from the checkpoints' own config.json files (not MistralConfig's class defaults).
PRESETS = {
    "mistral_7b_v0.1": dict(_PRESET_7B, rope_theta=10000.0, sliding_window=4096),
    "mistral_7b_instruct_v0.1": dict(_PRESET_7B, rope_theta=10000.0, sliding_window=4096),
    "mistral_7b_instruct_v0.2": dict(_PRESET_7B, rope_theta=1000000.0, sliding_window=None),
    "mistral_7b_v0.3": dict(_PRESET_7B, vocab_size=32768, rope_theta=1000000.0, sliding_window=None),
    "mistral_7b_instruct_v0.3": dict(
        _PRESET_7B, vocab_size=32768, rope_theta=1000000.0, sliding_window=None
    ),
}

# HF config.json keys that `to_dict` writes itself (as do transformers' bookkeeping keys starting
# with "_", e.g. "_name_or_path", which are dropped). Every other unknown key is kept in `extra`
# and written back, as HF does.
_REWRITTEN_KEYS = {"architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "rope_parameters"}

# `hidden_act` names of HF's ACT2FN that the MLP computes (`layers.activations.ACTIVATIONS`).
HIDDEN_ACTS = ("silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "tanh")

PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


@dataclasses.dataclass
class MistralConfig:
    """Hyper-parameters of a Mistral model, field for field as in HF `MistralConfig`.

    `head_dim` defaults to `hidden_size // num_attention_heads`; `sliding_window=None` means
    plain causal attention (v0.2 and v0.3). `torch_dtype` records the checkpoint's dtype.
    `tie_word_embeddings=True` (no released Mistral has it) makes the causal LM's logits use the
    embedding matrix instead of an `lm_head`.
    `output_attentions`, `output_hidden_states`, `return_dict` and `use_cache` are the defaults of
    the models' `call` arguments of the same names; `problem_type` picks the sequence classifier's
    loss (None: from `num_labels` and the labels' dtype, as HF). `extra` holds config.json keys
    this class does not use, written back by `to_dict`. Setting `num_labels` to a new size resets
    `id2label` / `label2id` to `LABEL_i`, as HF does.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = None
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: object = 2
    pad_token_id: int = None
    num_labels: int = 2
    id2label: dict = None
    label2id: dict = None
    classifier_dropout: float = None
    torch_dtype: str = "float32"
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    problem_type: str = None
    output_attentions: bool = False
    output_hidden_states: bool = False
    return_dict: bool = True
    use_cache: bool = True
    extra: dict = dataclasses.field(default_factory=dict)

    def __setattr__(self, name, value):
        if name == "num_labels" and getattr(self, "id2label", None) is not None and len(self.id2label) != value:
            super().__setattr__("id2label", {i: f"LABEL_{i}" for i in range(value)})
            super().__setattr__("label2id", {f"LABEL_{i}": i for i in range(value)})
        super().__setattr__(name, value)

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // max(self.num_attention_heads, 1)
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self.id2label = {int(i): str(label) for i, label in self.id2label.items()}
        self.num_labels = len(self.id2label)
        if self.label2id is None:
            self.label2id = {label: i for i, label in self.id2label.items()}
        self.label2id = {str(label): int(i) for label, i in self.label2id.items()}
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the field when the hyper-parameters cannot form a model."""
        positive = (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MistralConfig.{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}): each key/value head serves "
                "a whole group of query heads"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.sliding_window is not None and (
            not isinstance(self.sliding_window, int) or self.sliding_window <= 0
        ):
            raise ValueError(
                f"sliding_window must be a positive integer or None, got {self.sliding_window!r}"
            )
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; choose one of {', '.join(HIDDEN_ACTS)}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")

    @property
    def eos_token_ids(self) -> list[int]:
        """`eos_token_id` as a list (HF allows an int or a list)."""
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, (list, tuple)):
            return [int(i) for i in self.eos_token_id]
        return [int(self.eos_token_id)]

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "MistralConfig":
        """The config of a released checkpoint, e.g. `"mistral_7b_v0.1"` (see `PRESETS`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return cls(**dict(PRESETS[name], **overrides))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MistralConfig":
        """Builds a config from a parsed HF `config.json` (hub or transformers v5 form)."""
        data = dict(data)
        rope = data.get("rope_parameters") or {}
        if "rope_theta" not in data and "rope_theta" in rope:
            data["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", "default") or "default"
        if rope_type != "default" or data.get("rope_scaling"):
            raise ValueError(
                f"rope scaling {rope_type!r} / {data.get('rope_scaling')!r} is not supported: "
                "Mistral-7B checkpoints use plain rotary embeddings"
            )
        if data.get("model_type", "mistral") != "mistral":
            raise ValueError(f"config.json is for model_type {data['model_type']!r}, not 'mistral'")
        data["torch_dtype"] = data.get("torch_dtype") or data.get("dtype") or "float32"
        if data.get("head_dim") is None:
            data.pop("head_dim", None)
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        extra = {
            k: v for k, v in data.items()
            if k not in fields and k not in _REWRITTEN_KEYS and not k.startswith("_")
        }
        extra.update(data.get("extra") or {})
        return cls(**{k: v for k, v in data.items() if k in fields}, extra=extra)

    def to_dict(self, form: str = "hub", architecture: str = "MistralForCausalLM") -> dict[str, Any]:
        """The HF `config.json` content: `form="hub"` (rope_theta, torch_dtype) or `"v5"`."""
        if form not in ("hub", "v5"):
            raise ValueError(f"form must be 'hub' or 'v5', got {form!r}")
        data = dataclasses.asdict(self)
        data.update(data.pop("extra"))
        data.update(
            architectures=[architecture],
            model_type="mistral",
            id2label={str(i): label for i, label in self.id2label.items()},
        )
        if data["classifier_dropout"] is None:
            del data["classifier_dropout"]
        if form == "v5":
            data["rope_parameters"] = {"rope_type": "default", "rope_theta": data.pop("rope_theta")}
            data["dtype"] = data.pop("torch_dtype")
        return data

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "MistralConfig":
        """Reads `config.json` (a file, or a folder holding one)."""
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no config.json at {path}")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from None
        return cls.from_dict(data)

    from_pretrained = from_json_file  # HF's name: a folder holding config.json, or the file

    def to_json_string(self, form: str = "hub", architecture: str = "MistralForCausalLM") -> str:
        """`to_dict` as indented JSON text with sorted keys, as HF writes config.json."""
        return json.dumps(self.to_dict(form, architecture), indent=2, sort_keys=True) + "\n"

    def to_json_file(
        self, path: str | os.PathLike, form: str = "hub", architecture: str = "MistralForCausalLM"
    ) -> None:
        """Writes `to_dict` to the file `path` (atomically)."""
        write_json(path, self.to_dict(form, architecture))

    def save(self, directory: str | os.PathLike, form: str = "hub", architecture: str = "MistralForCausalLM") -> None:
        """Writes `directory/config.json` (atomically: the old file or the new one, never half)."""
        os.makedirs(directory, exist_ok=True)
        self.to_json_file(os.path.join(directory, "config.json"), form, architecture)

    save_pretrained = save  # HF's name

    def num_parameters(self, with_lm_head: bool = True) -> int:
        """Parameter count of the backbone (plus `lm_head` when asked)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attention = h * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        per_layer = attention + 3 * h * i + 2 * h
        total = self.vocab_size * h + self.num_hidden_layers * per_layer + h
        return total + (self.vocab_size * h if with_lm_head and not self.tie_word_embeddings else 0)
