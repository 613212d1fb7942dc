"""`GenerationConfig`: the settings of one generation request under HF's names, checked once.

Every runtime reads a request through this object: `TFMistralForCausalLM.generate` honours every
field; the TFLite runner and the SavedModel signatures honour the sampling fields alone and call
`refuse_unsupported`, so a setting they cannot honour is an error, never silently ignored.
Plain Python (no TensorFlow), so the TFLite runner and the CLI import it cheaply.
"""

from collections.abc import Collection, KeysView, Mapping
import copy
import dataclasses
import json
import math
import os
from typing import Any

from tf_mistral.atomic import write_json
from tf_mistral.config import MistralConfig

FILE_NAME = "generation_config.json"

# HF generation settings tf_mistral does not implement, with the value that means "off" (HF's
# default); a checkpoint's generation_config.json may carry them at that value.
_NOT_IMPLEMENTED = {
    "num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "typical_p": 1.0, "min_p": None,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "diversity_penalty": 0.0, "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None, "min_length": 0,
    "sequence_bias": None, "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "renormalize_logits": False, "exponential_decay_length_penalty": None,
    "guidance_scale": None, "output_attentions": False, "output_hidden_states": False,
}


@dataclasses.dataclass
class GenerationConfig:
    """How `generate` continues a prompt; HF `GenerationConfig`'s names and meanings.

    Length: `max_new_tokens` (default 20) or `max_length` (prompt + new); `min_new_tokens`: the
    end tokens are masked until that many new tokens exist.
    Choice: greedy, or `do_sample` with `temperature`, `top_k` (None: no filter; HF's own default
    is 50), `top_p`, each filter keeping at least `min_tokens_to_keep` tokens; `seed` (int32, None:
    random) makes sampling reproducible. `num_return_sequences` samples that many rows per prompt.
    Penalties (HF's logits processors, applied before temperature and the filters):
    `repetition_penalty` (> 1 lowers the logits of tokens already in the row: positive ones
    divided, negative ones multiplied), `no_repeat_ngram_size` (n > 0: no n-gram occurs twice in
    a row). Padding is not part of a row's history.
    Ending: `eos_token_id` (int or list; None: the model's), `pad_token_id` (what finished rows
    emit), `stop_strings` (str or list; a row ends once its text contains one; needs a tokenizer).
    Outputs: `return_dict_in_generate` gives a `GenerateOutput` with `sequences`, and with
    `output_scores` the processed scores, with `output_logits` the raw logits of each step.
    Keys of a generation_config.json that tf_mistral does not use are kept in `extra` and written
    back; one that asks for a feature it lacks (e.g. `num_beams` 4) is refused.
    """

    max_new_tokens: int = None
    max_length: int = None
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = None
    top_p: float = 1.0
    min_tokens_to_keep: int = 1
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1
    seed: int = None
    eos_token_id: object = None
    pad_token_id: int = None
    bos_token_id: int = None
    stop_strings: object = None
    return_dict_in_generate: bool = False
    output_scores: bool = False
    output_logits: bool = False
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings `generate` accepts as keyword arguments."""
        return tuple(field.name for field in dataclasses.fields(cls) if field.name != "extra")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "GenerationConfig":
        """From a generation_config.json dict: known keys become fields, the rest `extra`."""
        names = set(cls.field_names())
        return cls(
            **{k: v for k, v in values.items() if k in names}, extra={k: v for k, v in values.items() if k not in names}
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "GenerationConfig":
        """Reads `path/generation_config.json` (or `path` itself, a json file)."""
        file = os.path.join(path, FILE_NAME) if os.path.isdir(path) else path
        with open(file, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    @classmethod
    def from_model_config(cls, config: MistralConfig) -> "GenerationConfig":
        """Defaults from a `MistralConfig`: its bos, eos and pad ids, as HF makes them."""
        return cls(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
            extra={"_from_model_config": True},
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field that differs from its default, and `extra`, as HF writes them."""
        default = GenerationConfig()
        values = {
            name: getattr(self, name) for name in self.field_names() if getattr(self, name) != getattr(default, name)
        }
        return {**self.extra, **values}

    def keys(self) -> KeysView[str]:
        """`dict(config)` is `config.to_dict()`."""
        return self.to_dict().keys()

    def __getitem__(self, name):
        return self.to_dict()[name]

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes `path/generation_config.json` (the folder is created)."""
        os.makedirs(path, exist_ok=True)
        write_json(os.path.join(path, FILE_NAME), self.to_dict())

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Sets the known fields among `kwargs`; returns the others (HF's contract)."""
        names = set(self.field_names())
        for name, value in kwargs.items():
            if name in names:
                setattr(self, name, value)
        return {name: value for name, value in kwargs.items() if name not in names}

    def merged(self, **kwargs: Any) -> "GenerationConfig":
        """A copy with `kwargs` set; raises ValueError naming any that is not an HF setting."""
        config = copy.deepcopy(self)
        unknown = config.update(**kwargs)
        # validate() refuses
        config.extra.update({name: unknown.pop(name) for name in set(unknown) & set(_NOT_IMPLEMENTED)})
        if unknown:
            raise ValueError(
                f"generate got unknown arguments {sorted(unknown)}; settings are {sorted(self.field_names())}"
            )
        return config

    def validate(self) -> None:
        """Raises ValueError for a value that would give garbage or that tf_mistral cannot honour."""
        for name, off in _NOT_IMPLEMENTED.items():
            if self.extra.get(name, off) != off:
                raise ValueError(
                    f"{name}={self.extra[name]!r} is not implemented by tf_mistral (greedy and sampling only)"
                )
        _check_int("min_new_tokens", self.min_new_tokens, 0)
        _check_int("min_tokens_to_keep", self.min_tokens_to_keep, 1)
        _check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        _check_int("num_return_sequences", self.num_return_sequences, 1)
        penalty = self.repetition_penalty
        if not (isinstance(penalty, (int, float)) and math.isfinite(penalty) and penalty > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0 (1.0: none), got {penalty!r}")
        if self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} needs do_sample=True: greedy decoding "
                "would return the same row every time (HF refuses it too)"
            )
        if self.output_scores or self.output_logits:
            if not self.return_dict_in_generate:
                raise ValueError("output_scores / output_logits need return_dict_in_generate=True")

    def stop_strings_list(self) -> list[str]:
        """`stop_strings` as a list of non-empty str."""
        strings = [self.stop_strings] if isinstance(self.stop_strings, str) else list(self.stop_strings or [])
        if not all(isinstance(s, str) and s for s in strings):
            raise ValueError(f"stop_strings must be a non-empty str or a list of them, got {self.stop_strings!r}")
        return strings

    def refuse_unsupported(self, runtime: str, supported: Collection[str]) -> None:
        """Raises ValueError naming each setting away from its default that `runtime` (its name, for
        the message) does not list in `supported`."""
        default = GenerationConfig()
        asked = [
            name for name in self.field_names()
            if name not in supported and getattr(self, name) != getattr(default, name)
        ]
        if asked:
            settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in asked)
            raise ValueError(
                f"{runtime} cannot honour {settings}: it supports {', '.join(sorted(supported))}; "
                "use TFMistralForCausalLM.generate for the others"
            )


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
