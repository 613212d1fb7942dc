"""Rewrites the token-embedding GATHER of a converted model as TFLite's EMBEDDING_LOOKUP.

Keras' `Embedding` is a gather, and the TF converter emits GATHER for it. ai-edge-quantizer
quantizes embedding tables only behind EMBEDDING_LOOKUP (the op LiteRT's blockwise-int4 embedding
kernel implements), so before int4 quantization every
    out[1, S, H] = GATHER(table[V, H], ids[1, S])            (axis 0)
becomes
    flat[S] = RESHAPE(ids);  rows[S, H] = EMBEDDING_LOOKUP(flat, table);  out = RESHAPE(rows)
The table stays one shared buffer; nothing else in the graph changes. The result keeps the
weights after the flatbuffer (offset buffers, as the converter wrote them), so size is unbounded.
"""

import numpy as np


def _opcode_index(model, schema, builtin):
    """Index of the operator code for `builtin`, added to the model if missing."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _add_tensor(model, subgraph, schema, name, shape, tensor_type, data=None):
    tensor = schema.TensorT()
    tensor.name, tensor.shape, tensor.type = name.encode(), list(shape), tensor_type
    tensor.buffer = 0
    if data is not None:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(np.asarray(data).tobytes(), np.uint8)
        model.buffers.append(buffer)
        tensor.buffer = len(model.buffers) - 1
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _reshape(model, subgraph, schema, source, target, shape, name):
    shape_tensor = _add_tensor(
        model, subgraph, schema, name, [len(shape)], schema.TensorType.INT32, np.array(shape, np.int32)
    )
    op = schema.OperatorT()
    op.opcodeIndex = _opcode_index(model, schema, schema.BuiltinOperator.RESHAPE)
    op.inputs, op.outputs = [source, shape_tensor], [target]
    op.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
    op.builtinOptions = schema.ReshapeOptionsT()
    op.builtinOptions.newShape = list(shape)
    return op


def _round_up_16(value):
    return (value + 15) & ~15


def _serialize_with_offsets(model, schema, flatbuffer_utils):
    """Packs `model` with every buffer of >= 1 KiB stored after the flatbuffer (16-byte aligned)."""
    large = {}
    for index, buffer in enumerate(model.buffers):
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(buffer.data, np.uint8)  # the object API packs lists byte by byte
        if buffer.data is not None and buffer.data.nbytes >= 1024:
            large[index] = buffer.data.reshape(-1).view(np.uint8)
            buffer.data, buffer.offset, buffer.size = None, 1, 1  # reserve the fields, patched below
    head = flatbuffer_utils.convert_object_to_bytearray(model)
    offset = _round_up_16(len(head))
    output = bytearray(offset + sum(_round_up_16(data.nbytes) for data in large.values()))
    output[:len(head)] = head
    packed = schema.Model.GetRootAs(output, 0)
    for index, data in large.items():
        flatbuffer_utils.update_packed_buffer(packed.Buffers(index), offset=offset, size=data.nbytes)
        output[offset:offset + data.nbytes] = memoryview(data)
        offset = _round_up_16(offset + data.nbytes)
    return output


def gathers_to_embedding_lookups(model_content, vocab_size):
    """Returns the flatbuffer with each GATHER from a constant `[vocab_size, H]` table rewritten.

    Raises ValueError when there is no such GATHER (the graph is not what the exporter made).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(memoryview(model_content))
    gather = _opcode_index(model, schema, schema.BuiltinOperator.GATHER)
    rewritten = 0
    for number, subgraph in enumerate(model.subgraphs):
        operators = []
        for op in subgraph.operators:
            table = subgraph.tensors[op.inputs[0]] if op.opcodeIndex == gather else None
            is_embedding = (
                table is not None and list(table.shape)[:1] == [vocab_size] and len(table.shape) == 2
                and model.buffers[table.buffer].data is not None and op.builtinOptions.axis == 0
            )
            if not is_embedding:
                operators.append(op)
                continue
            ids, output = subgraph.tensors[op.inputs[1]], subgraph.tensors[op.outputs[0]]
            count, hidden = int(np.prod(ids.shape)), int(table.shape[1])
            prefix = f"embedding_lookup_{number}_{rewritten}"  # names must be unique in the model
            flat = _add_tensor(model, subgraph, schema, f"{prefix}/ids", [count], ids.type)
            rows = _add_tensor(model, subgraph, schema, f"{prefix}/rows", [count, hidden], output.type)
            lookup = schema.OperatorT()
            lookup.opcodeIndex = _opcode_index(model, schema, schema.BuiltinOperator.EMBEDDING_LOOKUP)
            lookup.inputs, lookup.outputs = [flat, op.inputs[0]], [rows]
            operators += [
                _reshape(model, subgraph, schema, op.inputs[1], flat, [count], f"{prefix}/ids_shape"),
                lookup,
                _reshape(model, subgraph, schema, rows, op.outputs[0], list(output.shape), f"{prefix}/out_shape"),
            ]
            rewritten += 1
        subgraph.operators = operators
    if not rewritten:
        raise ValueError(f"found no GATHER from a [{vocab_size}, hidden] constant table to rewrite")
    return _serialize_with_offsets(model, schema, flatbuffer_utils)
