"""The weights of a `.tflite` export, one tensor at a time: which tensors, read from where, and
quantized how.

The exported graph takes no weight from TensorFlow (see `tflite.py`): the TF converter sees a
graph whose weights are inputs, and `tflite_assembly.py` turns those inputs into constant buffers
that are filled here, from the checkpoint, one tensor at a time. A float32 copy of one tensor (the
largest is the 7B `lm_head`, 0.5 GB) is the most an export ever holds, whatever the model's size.

Each weight is stored in HF layout, `[out, in]` for a projection (what FULLY_CONNECTED reads) and
`[vocab, hidden]` for the embedding. As the TF converter does with constant weights, each RMSNorm
weight is multiplied into the input columns of the projections that read the norm's output
(`input_layernorm` into q/k/v, `post_attention_layernorm` into gate/up, `model.norm` into
`lm_head`), and the graph's norms multiply by one.

Encodings (the ones the TF converter and ai-edge-quantizer write, so that LiteRT's kernels run
them as before):
    none  float32.
    fp16  float16, dequantized to float32 by a DEQUANTIZE op (XNNPACK reads the 16-bit weights).
    int8  projections: int8, one symmetric scale per output row; the embedding: int8 with one
          scale for the whole table, gathered then dequantized (the TF converter's dynamic range).
    int4  int4 in blocks of `block_size` values along the input axis (32-256), one float16 scale per
          block (rounded to 7 mantissa bits), two values a byte, the first in the low nibble
          (ai-edge-quantizer's blockwise recipe); the embedding through EMBEDDING_LOOKUP.
An int4 export can keep some weights in int8 (`int8_weights`, e.g. the embedding and `lm_head`):
each weight has its own encoding (`weight_encodings`), and LiteRT picks each op's kernel from it.
"""

from collections.abc import Callable, Iterable, Sequence
import dataclasses

import ml_dtypes
import numpy as np

from tf_mistral.config import MistralConfig

EMBEDDING = "model.embed_tokens.weight"
WEIGHT_INPUT_PREFIX = "weight_"  # the graph inputs that carry weights: weight_model_layers_0_mlp_up_proj_weight

_NORM_READERS = {
    "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
}


@dataclasses.dataclass(frozen=True)
class Weight:
    """One weight input of the exported graph.

    Attributes:
        name: the HF tensor name (`model.layers.0.self_attn.q_proj.weight`).
        shape: HF layout: `[out, in]` for a projection, `[vocab, hidden]` for the embedding.
        norm: the HF name of the RMSNorm weight folded into its input columns, or None.
    """

    name: str
    shape: tuple
    norm: str | None = None

    @property
    def input_name(self) -> str:
        """The graph input that carries this weight until the assembly binds it."""
        return WEIGHT_INPUT_PREFIX + self.name.replace(".", "_")


def weight_plan(config: MistralConfig) -> list[Weight]:
    """`[Weight]` of a causal LM with `config`: the embedding, each layer's projections, `lm_head`."""
    hidden, inner, head = config.hidden_size, config.intermediate_size, config.head_dim
    shapes = {
        "self_attn.q_proj": (config.num_attention_heads * head, hidden),
        "self_attn.k_proj": (config.num_key_value_heads * head, hidden),
        "self_attn.v_proj": (config.num_key_value_heads * head, hidden),
        "self_attn.o_proj": (hidden, config.num_attention_heads * head),
        "mlp.gate_proj": (inner, hidden),
        "mlp.up_proj": (inner, hidden),
        "mlp.down_proj": (hidden, inner),
    }
    folded = {proj: norm for norm, projs in _NORM_READERS.items() for proj in projs}
    plan = [Weight(EMBEDDING, (config.vocab_size, hidden))]
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}"
        for proj, shape in shapes.items():
            norm = f"{prefix}.{folded[proj]}.weight" if proj in folded else None
            plan.append(Weight(f"{prefix}.{proj}.weight", shape, norm))
    plan.append(Weight("lm_head.weight", (config.vocab_size, hidden), "model.norm.weight"))
    return plan


def weight_encodings(plan: Sequence[Weight], quantize: str, int8_weights: Iterable[str] | None = ()) -> dict[str, str]:
    """`{HF name: encoding}` for the weights of `plan`: `quantize` for each, but "int8" for those of
    an int4 export whose name contains one of `int8_weights` ("lm_head", "embed_tokens",
    "mlp.down_proj", "layers.0."). Raises ValueError for an entry that names no weight, or for
    `int8_weights` with another `quantize`."""
    int8_weights = tuple(int8_weights or ())
    if int8_weights and quantize != "int4":
        raise ValueError(f"int8_weights keeps weights of an int4 export in int8; with quantize={quantize!r} "
                         "every weight is already encoded alike: drop int8_weights or use quantize='int4'")
    unmatched = [part for part in int8_weights if not any(part in w.name for w in plan)]
    if unmatched:
        raise ValueError(f"int8_weights {unmatched} match no weight; weights are named like "
                         f"{plan[0].name!r}, {plan[1].name!r}, {plan[-1].name!r}")
    return {w.name: "int8" if any(part in w.name for part in int8_weights) else quantize for w in plan}


def norm_names(config: MistralConfig) -> list[str]:
    """HF names of the RMSNorm weights (folded into projections, bound to ones in the graph)."""
    names = [f"model.layers.{i}.{norm}.weight" for i in range(config.num_hidden_layers) for norm in _NORM_READERS]
    return names + ["model.norm.weight"]


def float_weight(read: Callable[[str], np.ndarray], weight: Weight) -> np.ndarray:
    """float32 `weight.shape`: the tensor `read(name)` returns, its norm folded in."""
    array = np.asarray(read(weight.name), dtype=np.float32)
    if array.shape != weight.shape:
        raise ValueError(f"tensor {weight.name!r} has shape {array.shape}; the config implies {weight.shape}")
    if weight.norm is not None:
        array *= np.asarray(read(weight.norm), dtype=np.float32)[None, :]
    return array


# ----------------------------------------------------------------------------------------------
# Encodings: the byte sizes (known before any tensor is read) and the bytes


def data_nbytes(shape: Sequence[int], quantize: str) -> int:
    """Bytes of one weight's main buffer."""
    count = int(np.prod(shape))
    return {"none": 4 * count, "fp16": 2 * count, "int8": count, "int4": (count + 1) // 2}[quantize]


def int4_scales_shape(shape: Sequence[int], block_size: int) -> tuple[int, int]:
    """`[rows, columns / block_size]`: one scale per block of `block_size` along the input axis."""
    rows, columns = shape
    if columns % block_size:
        raise ValueError(f"int4 blocks of {block_size} need input sizes divisible by it, got {shape}")
    return rows, columns // block_size


def encode_float16(array: np.ndarray) -> np.ndarray:
    """float16 bytes of float32 `array`."""
    return array.astype(np.float16)


def encode_int8_rows(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(int8 [rows, columns], float32 scales [rows])`: symmetric, one scale per row, q in [-127, 127]."""
    bound = np.abs(array).max(axis=1)
    scales = np.where(bound > 0, bound / 127.0, 1.0).astype(np.float32)
    return _round_to_int(array / scales[:, None], -127, 127), scales


def encode_int8_tensor(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(int8 array, float32 scale [1])`: symmetric, one scale for the whole tensor."""
    bound = float(np.abs(array).max())
    scale = np.float32(bound / 127.0 if bound > 0 else 1.0)
    return _round_to_int(array / scale, -127, 127), np.array([scale], np.float32)


def encode_int4_blocks(array: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`(packed uint8 [rows * columns / 2], float16 scales [rows, columns / block_size])`.

    Symmetric per block of `block_size` values along the input axis: scale = max |w| / 7 (at least 1e-9 / 7),
    rounded to 7 mantissa bits (bfloat16, then float16); q = round-half-even(w / scale) in [-8, 7]; two values a
    byte, the first in the low nibble.
    """
    rows, blocks = int4_scales_shape(array.shape, block_size)
    grouped = array.reshape(rows, blocks, block_size)
    bound = np.maximum(np.abs(grouped).max(axis=2), 1e-9)
    scales = (bound / 7.0).astype(ml_dtypes.bfloat16).astype(np.float16)
    quantized = np.clip(np.rint(grouped / scales.astype(np.float32)[:, :, None]), -8, 7).astype(np.int8).reshape(-1)
    packed = (quantized[0::2].astype(np.uint8) & 0xF) | ((quantized[1::2].astype(np.uint8) & 0xF) << 4)
    return packed, scales


def _round_to_int(array, low, high):
    """int8 of `array` rounded half away from zero (TFLite's rounding) and clipped."""
    return np.clip(np.trunc(array + np.copysign(0.5, array)), low, high).astype(np.int8)
