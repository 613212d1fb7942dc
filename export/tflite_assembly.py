"""Turns the converted graph's weight inputs into constant buffers and writes the `.tflite` file,
streaming the weights into it one tensor at a time.

The TF converter converts a graph whose weights are inputs (`weight_<HF name>`, see `tflite.py`):
it holds no weight, so its memory does not grow with the model. Here, in every signature's
subgraph, each weight input becomes a constant tensor on one buffer that all signatures share,
encoded as `tflite_weights` describes (DEQUANTIZE ops for float16, int8 / int4 quantization
parameters, EMBEDDING_LOOKUP for the int4 embedding), and is dropped from the signature's inputs.

The file is the flatbuffer (the graph, a few MB) followed by the weights, each buffer 64-byte
aligned, located by the `offset` / `size` fields of its `Buffer` (the layout the converter writes
with buffer offsets, which LiteRT, LiteRT-LM and ai-edge-quantizer read; no 2 GB limit). All sizes
are known from the shapes, so the flatbuffer is packed once, before any weight is read; the int8
scales, known only once a tensor is read, are then written into the packed scale vectors.
"""

from collections.abc import Callable, Mapping, Sequence
import os

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils
import numpy as np
from tqdm.auto import tqdm

from tf_mistral.export import flatbuffer_edit as edit
from tf_mistral.export import tflite_weights as weights_mod
from tf_mistral.export.tflite_weights import EMBEDDING, WEIGHT_INPUT_PREFIX

_ALIGN = 64


def _round_up(value):
    return -(-value // _ALIGN) * _ALIGN


class _Bound:
    """Where one weight went: its encoding, its int4 block size, its data buffer, its int4 scales
    buffer, and the tensors `(subgraph index, tensor index)` whose int8 scale vectors get its scales."""

    def __init__(self, weight, encoding, block_size, data_buffer, scales_buffer=None):
        self.weight, self.encoding, self.block_size = weight, encoding, block_size
        self.data_buffer, self.scales_buffer = data_buffer, scales_buffer
        self.scaled_tensors = []


def _consumers(subgraph, tensor):
    return [op for op in subgraph.operators if tensor in op.inputs]


def _bind(model, subgraph_index, tensor_index, bound):
    """Makes tensor `tensor_index` of the subgraph the constant weight of `bound`, in its encoding."""
    subgraph = model.subgraphs[subgraph_index]
    tensor = subgraph.tensors[tensor_index]
    weight = bound.weight
    consumers = _consumers(subgraph, tensor_index)
    if not consumers:
        return  # e.g. lm_head in a prefill signature (no logits): an unread tensor, never allocated
    expected = "GATHER" if weight.name == EMBEDDING else "FULLY_CONNECTED"
    found = sorted({edit.builtin_name(model, op) for op in consumers})
    if found != [expected]:
        raise ValueError(f"{weight.name} feeds {found} in the converted graph, where the exporter "
                         f"expects {expected}: the TF converter changed how it lowers the model")
    name, encoding = weight.name, bound.encoding
    if encoding == "none":
        tensor.buffer = bound.data_buffer
    elif encoding == "fp16":
        half = edit.add_tensor(subgraph, f"{name}/fp16", weight.shape, schema.TensorType.FLOAT16, bound.data_buffer)
        subgraph.operators.insert(0, edit.dequantize_op(model, half, tensor_index))
    elif encoding == "int8":
        tensor.buffer, tensor.type = bound.data_buffer, schema.TensorType.INT8
        scales = 1 if name == EMBEDDING else weight.shape[0]
        tensor.quantization = _int8_quantization(scales)
        bound.scaled_tensors.append((subgraph_index, tensor_index))
        if name == EMBEDDING:
            for gather in consumers:  # int8 rows out of the gather, then float32
                output = gather.outputs[0]
                rows = edit.add_tensor(subgraph, f"{name}/rows_int8/{subgraph_index}", subgraph.tensors[output].shape,
                                       schema.TensorType.INT8)
                subgraph.tensors[rows].quantization = _int8_quantization(1)
                bound.scaled_tensors.append((subgraph_index, rows))
                gather.outputs = [rows]
                position = subgraph.operators.index(gather)
                subgraph.operators.insert(position + 1, edit.dequantize_op(model, rows, output))
        else:
            for op in consumers:
                op.builtinOptions.asymmetricQuantizeInputs = True
    elif encoding == "int4":
        tensor.buffer, tensor.type = bound.data_buffer, schema.TensorType.INT4
        scales_shape = weights_mod.int4_scales_shape(weight.shape, bound.block_size)
        scales = edit.add_tensor(subgraph, f"{name}_scales", scales_shape,
                                 schema.TensorType.FLOAT16, bound.scales_buffer)
        tensor.quantization = schema.QuantizationParametersT()
        tensor.quantization.quantizedDimension = 0
        tensor.quantization.detailsType = schema.QuantizationDetails.BlockwiseQuantization
        details = schema.BlockwiseQuantizationT()
        details.scales, details.zeroPoints, details.blockSize = scales, -1, bound.block_size
        tensor.quantization.details = details
        if name == EMBEDDING:
            for number, gather in enumerate(consumers):
                position = subgraph.operators.index(gather)
                prefix = f"embedding_lookup/{subgraph_index}/{number}"
                subgraph.operators[position:position + 1] = edit.embedding_lookup_ops(model, subgraph, gather, prefix)


def _int8_quantization(count):
    quantization = schema.QuantizationParametersT()
    quantization.scale = np.ones(count, np.float32)  # the real scales are written after packing
    quantization.zeroPoint = np.zeros(count, np.int64)
    quantization.quantizedDimension = 0
    return quantization


def bind_weights(
    model: schema.ModelT, plan: Sequence[weights_mod.Weight], encodings: Mapping[str, str], int4_block_size: int
) -> list[_Bound]:
    """Binds every weight input of every signature of `model` (a `ModelT`), each weight in its
    encoding (`{HF name: encoding}`; int4 in blocks of `int4_block_size`); returns `[_Bound]` in
    plan order. Raises ValueError when a signature lacks a weight or has an unknown input."""
    bound = {}
    for weight in plan:
        encoding = encodings[weight.name]
        data = edit.add_buffer(model)
        scales = edit.add_buffer(model) if encoding == "int4" else None
        bound[weight.input_name] = _Bound(weight, encoding, int4_block_size, data, scales)
    for signature in model.signatureDefs:
        subgraph = model.subgraphs[signature.subgraphIndex]
        inputs = {entry.name.decode(): entry.tensorIndex for entry in signature.inputs}
        missing = [name for name in bound if name not in inputs]
        if missing:
            raise ValueError(f"signature {signature.signatureKey.decode()} lacks weight inputs, e.g. {missing[:3]}")
        for name, tensor_index in inputs.items():
            if name.startswith(WEIGHT_INPUT_PREFIX):
                _bind(model, signature.subgraphIndex, tensor_index, bound[name])
        kept = [entry for entry in signature.inputs if not entry.name.decode().startswith(WEIGHT_INPUT_PREFIX)]
        signature.inputs = kept
        subgraph.inputs = [entry.tensorIndex for entry in kept]
    return list(bound.values())


def _buffer_sizes(bound):
    """`[(buffer index, bytes)]` in the order the weights are written."""
    sizes = []
    for item in bound:
        sizes.append((item.data_buffer, weights_mod.data_nbytes(item.weight.shape, item.encoding)))
        if item.scales_buffer is not None:
            rows, blocks = weights_mod.int4_scales_shape(item.weight.shape, item.block_size)
            sizes.append((item.scales_buffer, 2 * rows * blocks))
    return sizes


def _encode(array, bound):
    """`(main bytes, int4 scale bytes or None, int8 scales or None)` of float32 `array`, the weight of `bound`."""
    encoding = bound.encoding
    if encoding == "none":
        return array, None, None
    if encoding == "fp16":
        return weights_mod.encode_float16(array), None, None
    if encoding == "int8":
        embedding = bound.weight.name == EMBEDDING
        data, scales = (weights_mod.encode_int8_tensor if embedding else weights_mod.encode_int8_rows)(array)
        return data, None, scales
    data, scales = weights_mod.encode_int4_blocks(array, bound.block_size)
    return data, scales, None


def write_model(
    converted: bytes, plan: Sequence[weights_mod.Weight], encodings: Mapping[str, str],
    read: Callable[[str], np.ndarray], output: str | os.PathLike, int4_block_size: int, progress: bool = True,
) -> tuple[bytes, int]:
    """Writes the `.tflite` file at `output` (atomically: `output.partial`, then renamed).

    Args:
        converted: flatbuffer bytes from the TF converter, with an input per weight (`Weight.input_name`).
        plan: `[tflite_weights.Weight]`, the weights the graph takes.
        encodings: `{HF name: one of tflite_options.QUANTIZE_OPTIONS}` (`tflite_weights.weight_encodings`).
        read: `read(hf_name)` -> the checkpoint tensor as a numpy array (any float dtype).
        output: the file to write.
        int4_block_size: values per scale of the int4 weights (one of `tflite_options.INT4_BLOCK_SIZES`).
        progress: a byte progress bar over the weights.

    Returns:
        `(the packed flatbuffer (graph and metadata, without the weights), the file size in bytes)`.
    """
    model = flatbuffer_utils.read_model_from_bytearray(memoryview(converted))
    bound = bind_weights(model, plan, encodings, int4_block_size)
    sizes = _buffer_sizes(bound)
    for index, _ in sizes:
        model.buffers[index].offset, model.buffers[index].size = 1, 1  # reserve the fields
    head = flatbuffer_utils.convert_object_to_bytearray(model)
    del model
    packed = schema.Model.GetRootAs(head, 0)
    offsets, position = {}, _round_up(len(head))
    for index, nbytes in sizes:
        offsets[index] = position
        flatbuffer_utils.update_packed_buffer(packed.Buffers(index), offset=position, size=nbytes)
        position = _round_up(position + nbytes)
    partial = f"{output}.partial"
    total = sum(nbytes for _, nbytes in sizes)
    try:
        with open(partial, "wb") as file, tqdm(total=total, unit="B", unit_scale=True, desc="writing weights",
                                                 disable=not progress) as bar:
            for item in bound:
                array = weights_mod.float_weight(read, item.weight)
                data, scale_bytes, scales = _encode(array, item)
                del array
                _write_at(file, offsets[item.data_buffer], data)
                if scale_bytes is not None:
                    _write_at(file, offsets[item.scales_buffer], scale_bytes)
                for subgraph_index, tensor_index in item.scaled_tensors:
                    vector = packed.Subgraphs(subgraph_index).Tensors(tensor_index).Quantization().ScaleAsNumpy()
                    vector[:] = scales
                bar.update(weights_mod.data_nbytes(item.weight.shape, item.encoding))
            file.truncate(position)
            _write_at(file, 0, np.frombuffer(head, np.uint8))
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, output)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return bytes(head), position


def _write_at(file, offset, array):
    file.seek(offset)
    file.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
