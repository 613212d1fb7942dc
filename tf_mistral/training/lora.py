"""LoRA on the attention and MLP projections, through Keras' own `Dense.enable_lora`.

Keras adds `lora_kernel_a [in, rank]` and `lora_kernel_b [rank, out]` (float32, B starts at
zero) to each chosen `Dense` and freezes its kernel; the layer then computes
`x @ (kernel + (alpha / rank) * A @ B)`. `enable_lora` here picks the projections and freezes
everything else, so only the LoRA matrices train (and a classifier's fresh `score` head, as
PEFT's `modules_to_save` does).

Adapters are saved on their own in PEFT's layout: `adapter_model.safetensors` with
`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight [rank, in]` and
`...lora_B.weight [out, rank]` (PyTorch's `[out, in]` convention: A and B transposed), plus
`adapter_config.json` (`r`, `lora_alpha`, `target_modules`). `save_pretrained` merges the
adapters into the base kernels in float32 (`checkpoint.merged_kernel`), giving a plain HF checkpoint.

A Keras int8-quantized base (`model.quantize("int8")` before `enable_lora`) works: Keras' int8
`Dense` adds the LoRA path in its quantized call (QLoRA-style training). Such a model cannot be
written by `save_pretrained` (it refuses quantized models); save the adapters, load them onto the
float base and save that.
"""

from collections.abc import Iterable
import json
import os

import keras
import numpy as np

from tf_mistral import checkpoint, safetensors_io
from tf_mistral.keras_internals import all_layers

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ALL_PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS
DEFAULT_TARGETS = ("q_proj", "v_proj")  # PEFT's default for Mistral
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_HEADS = ("score",)  # trained with the adapters and saved beside them
_PEFT_TASKS = {
    "causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
}


def resolve_targets(target_modules: str | Iterable[str] | None) -> tuple[str, ...]:
    """A tuple of projection names from names, "all" / "all-linear" (every projection), or None."""
    if target_modules is None:
        return DEFAULT_TARGETS
    if isinstance(target_modules, str):
        target_modules = ALL_PROJECTIONS if target_modules in ("all", "all-linear") else (target_modules,)
    targets = tuple(dict.fromkeys(target_modules))
    unknown = [t for t in targets if t not in ALL_PROJECTIONS]
    if unknown or not targets:
        raise ValueError(f"target_modules {list(target_modules)!r}: choose among {ALL_PROJECTIONS}, or 'all'")
    return targets


def projections(
    model: keras.Model, targets: Iterable[str] = ALL_PROJECTIONS
) -> dict[str, keras.layers.Dense]:
    """`{HF module name: Dense}`, e.g. "model.layers.0.self_attn.q_proj", for the chosen projections."""
    backbone = model._backbone()
    prefix = "" if backbone is model else "model."
    found = {}
    for i, layer in enumerate(backbone.decoder_layers):
        for name in targets:
            parent, kind = (layer.self_attn, "self_attn") if name in ATTENTION_PROJECTIONS else (layer.mlp, "mlp")
            found[f"{prefix}layers.{i}.{kind}.{name}"] = getattr(parent, name)
    return found


def lora_layers(model: keras.Model) -> dict[str, keras.layers.Dense]:
    """`{HF module name: Dense}` of the projections that have LoRA enabled."""
    return {name: dense for name, dense in projections(model).items() if dense.lora_enabled}


def enable_lora(
    model: keras.Model, rank: int, target_modules: str | Iterable[str] | None = DEFAULT_TARGETS,
    lora_alpha: float | None = None,
) -> keras.Model:
    """Adds rank-`rank` LoRA to the `target_modules` projections of every layer; freezes the rest.

    Args:
        model: a built tf_mistral model (float or Keras-quantized int8).
        rank: LoRA rank r (8 or 16 are common).
        target_modules: projection names (`ALL_PROJECTIONS`) or "all"; default q_proj, v_proj.
        lora_alpha: scale numerator (update = alpha / r * A @ B); default `rank` (scale 1), as
            Keras does. PEFT's default is 8 whatever the rank.

    Call it before `compile()`. The model's trainable weights are then the LoRA matrices (and a
    classifier's `score`).
    """
    if not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    targets = resolve_targets(target_modules)
    if lora_layers(model):
        raise ValueError(f"LoRA is already enabled on {sorted(lora_layers(model))[:3]}...; enable it once per model")
    chosen = projections(model, targets)
    for dense in chosen.values():
        if dense.quantization_mode not in (None, "int8", "int4"):
            raise ValueError(
                f"{dense.name} is quantized as {dense.quantization_mode}; Keras has LoRA for int8/int4 only"
            )
        dense.enable_lora(int(rank), lora_alpha=lora_alpha)
    keep = {id(dense) for dense in chosen.values()}  # their kernels are frozen by Keras already
    for layer in all_layers(model, include_self=False):
        if not layer._layers and id(layer) not in keep and layer.name not in _HEADS:
            layer.trainable = False  # leaves: embeddings, norms, other projections, lm_head
    return model


def save_lora_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Writes the adapters (and a classifier's `score`) to the folder `path` in PEFT's layout."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA weights: call enable_lora(rank) first")
    ranks = {(d.lora_rank, d.lora_alpha) for d in layers.values()}
    if len(ranks) > 1:
        raise ValueError(f"save_lora_weights needs one rank and alpha for all layers, found {sorted(ranks)}")
    (rank, alpha), = ranks
    arrays = {}
    for name, dense in layers.items():
        arrays[f"base_model.model.{name}.lora_A.weight"] = np.asarray(dense.lora_kernel_a.numpy()).T
        arrays[f"base_model.model.{name}.lora_B.weight"] = np.asarray(dense.lora_kernel_b.numpy()).T
    heads = [h for h in _HEADS if isinstance(getattr(model, h, None), keras.layers.Layer)]  # not the LM's score()
    for head in heads:
        dense = getattr(model, head)
        arrays[f"base_model.model.{head}.weight"] = np.asarray(dense.kernel.numpy()).T
        if dense.use_bias:
            arrays[f"base_model.model.{head}.bias"] = np.asarray(dense.bias.numpy())
    config = {
        "peft_type": "LORA",
        "task_type": _PEFT_TASKS.get(getattr(model, "training_task", None), "FEATURE_EXTRACTION"),
        "r": int(rank),
        "lora_alpha": float(alpha),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": sorted({name.rsplit(".", 1)[1] for name in layers}),
        "modules_to_save": heads or None,
        "base_model_name_or_path": None,
    }
    os.makedirs(path, exist_ok=True)
    safetensors_io.write_tensors(os.path.join(path, ADAPTER_WEIGHTS), arrays)
    temporary = os.path.join(path, ADAPTER_CONFIG + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    os.replace(temporary, os.path.join(path, ADAPTER_CONFIG))


def load_lora_weights(model: keras.Model, path: str | os.PathLike) -> keras.Model:
    """Loads adapters written by `save_lora_weights` (or PEFT, same layout) into `model`.

    LoRA is enabled with the file's rank, alpha and targets when the model has none yet; a model
    with LoRA already enabled must match them. Every tensor's name and shape is checked first.
    """
    config_path = os.path.join(path, ADAPTER_CONFIG)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {path}: is this a LoRA adapter folder (save_lora_weights)?")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{config_path} describes a {config['peft_type']} adapter; only LORA is supported")
    rank, alpha = int(config["r"]), config.get("lora_alpha", 8)
    targets = resolve_targets(config["target_modules"])
    if not lora_layers(model):
        enable_lora(model, rank, targets, lora_alpha=alpha)
    layers = lora_layers(model)
    mismatched = {
        name: (d.lora_rank, d.lora_alpha) for name, d in layers.items() if (d.lora_rank, d.lora_alpha) != (rank, alpha)
    }
    if mismatched or set(layers) != set(projections(model, targets)):
        raise ValueError(
            f"the adapter in {path} has rank {rank}, alpha {alpha} on {list(targets)}; this model's LoRA differs "
            f"(e.g. {sorted(layers)[:2]}, "
            f"rank/alpha {sorted(set((d.lora_rank, d.lora_alpha) for d in layers.values()))}). "
            "Load it into a model without LoRA and it is enabled to match"
        )
    stored = safetensors_io.SafetensorsFile(os.path.join(path, ADAPTER_WEIGHTS))
    plan = []
    for name, dense in layers.items():
        plan.append((f"base_model.model.{name}.lora_A.weight", dense.lora_kernel_a, True))
        plan.append((f"base_model.model.{name}.lora_B.weight", dense.lora_kernel_b, True))
    for head in config.get("modules_to_save") or ():
        dense = getattr(model, head, None)
        if dense is None:
            raise ValueError(f"the adapter in {path} carries a {head!r} head that this model does not have")
        plan.append((f"base_model.model.{head}.weight", dense.kernel, True))
        if dense.use_bias:
            plan.append((f"base_model.model.{head}.bias", dense.bias, False))
    for key, variable, transposed in plan:
        if key not in stored.tensors:
            raise safetensors_io.CheckpointError(f"{ADAPTER_WEIGHTS} in {path} lacks {key!r}")
        expected = tuple(variable.shape)[::-1] if transposed else tuple(variable.shape)
        if stored.tensors[key][1] != expected:
            raise safetensors_io.CheckpointError(
                f"{key!r} has shape {stored.tensors[key][1]} in {path} but this model needs {expected}: "
                "was the adapter trained on another model size?"
            )
    unexpected = sorted(set(stored.tensors) - {key for key, _, _ in plan})
    if unexpected:
        raise safetensors_io.CheckpointError(
            f"{ADAPTER_WEIGHTS} in {path} has tensors this model does not know, e.g. {unexpected[:3]}"
        )
    for key, variable, transposed in plan:
        value = stored.read(key)
        variable.assign(
            np.ascontiguousarray(value.T if transposed else value, dtype=checkpoint.numpy_dtype(variable.dtype))
        )
    return model
