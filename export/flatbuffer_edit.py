"""Small edits of a TFLite model in the flatbuffer object API (`schema_py_generated.ModelT`):
operator codes, tensors and buffers added, and the op sequences the assembly inserts.

The token embedding is a GATHER from the table. ai-edge-quantizer's int4 recipe and LiteRT's
blockwise-int4 embedding kernel work behind EMBEDDING_LOOKUP instead, so for int4 every
    out[1, S, H] = GATHER(table[V, H], ids[1, S])            (axis 0)
becomes
    flat[S] = RESHAPE(ids);  rows[S, H] = EMBEDDING_LOOKUP(flat, table);  out = RESHAPE(rows)
"""

from collections.abc import Sequence

from ai_edge_litert import schema_py_generated as schema
import numpy as np


def builtin_name(model: schema.ModelT, op: schema.OperatorT) -> str:
    """The builtin operator name of `op` (`"FULLY_CONNECTED"`), or `CUSTOM:<name>`."""
    code = model.operatorCodes[op.opcodeIndex]
    number = max(code.builtinCode, code.deprecatedBuiltinCode)
    if number == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{code.customCode.decode()}"
    return _BUILTIN_NAMES[number]


_BUILTIN_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def opcode_index(model: schema.ModelT, builtin: int) -> int:
    """Index of the operator code for `builtin`, added to the model if missing."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def add_buffer(model: schema.ModelT, data: np.ndarray | None = None) -> int:
    """A new buffer (inline `data` bytes, or none yet); returns its index."""
    buffer = schema.BufferT()
    if data is not None:
        buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def add_tensor(subgraph: schema.SubGraphT, name: str, shape: Sequence[int], tensor_type: int, buffer: int = 0) -> int:
    """A new tensor of `subgraph` (name unique in the model); returns its index."""
    tensor = schema.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = name.encode(), list(shape), tensor_type, buffer
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def dequantize_op(model: schema.ModelT, source: int, target: int) -> schema.OperatorT:
    """DEQUANTIZE `source` (float16, or int8 with its quantization) into float32 `target`."""
    op = schema.OperatorT()
    op.opcodeIndex = opcode_index(model, schema.BuiltinOperator.DEQUANTIZE)
    op.inputs, op.outputs = [source], [target]
    return op


def _reshape_op(model, subgraph, source, target, shape, name):
    shape_tensor = add_tensor(
        subgraph, name, [len(shape)], schema.TensorType.INT32, add_buffer(model, np.array(shape, np.int32))
    )
    op = schema.OperatorT()
    op.opcodeIndex = opcode_index(model, schema.BuiltinOperator.RESHAPE)
    op.inputs, op.outputs = [source, shape_tensor], [target]
    op.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
    op.builtinOptions = schema.ReshapeOptionsT()
    op.builtinOptions.newShape = list(shape)
    return op


def embedding_lookup_ops(
    model: schema.ModelT, subgraph: schema.SubGraphT, gather: schema.OperatorT, prefix: str
) -> list[schema.OperatorT]:
    """The three ops (RESHAPE, EMBEDDING_LOOKUP, RESHAPE) that replace a token-embedding GATHER
    (axis 0, table first); `prefix` names the new tensors (unique in the model)."""
    if gather.builtinOptions.axis != 0:
        raise ValueError(f"the embedding GATHER reads axis {gather.builtinOptions.axis}, not 0")
    table, ids, output = (subgraph.tensors[i] for i in (gather.inputs[0], gather.inputs[1], gather.outputs[0]))
    count, hidden = int(np.prod(ids.shape)), int(table.shape[1])
    flat = add_tensor(subgraph, f"{prefix}/ids", [count], ids.type)
    rows = add_tensor(subgraph, f"{prefix}/rows", [count, hidden], output.type)
    lookup = schema.OperatorT()
    lookup.opcodeIndex = opcode_index(model, schema.BuiltinOperator.EMBEDDING_LOOKUP)
    lookup.inputs, lookup.outputs = [flat, gather.inputs[0]], [rows]
    return [
        _reshape_op(model, subgraph, gather.inputs[1], flat, [count], f"{prefix}/ids_shape"),
        lookup,
        _reshape_op(model, subgraph, rows, gather.outputs[0], list(output.shape), f"{prefix}/out_shape"),
    ]
