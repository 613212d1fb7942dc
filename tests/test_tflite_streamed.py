"""The streamed TFLite export against the tools it replaces: the same graph converted with its
weights as constants by the TF converter (float32, float16, dynamic-range int8) and quantized by
ai-edge-quantizer (int4 blockwise) must give the same logits and caches as our file, whose weights
are written by `tflite_assembly` one tensor at a time. Also: the exporter never allocates the
model's weights, and its quantizers equal the reference tools tensor by tensor."""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import fixture_path

pytest.importorskip("ai_edge_litert")
quantizer = pytest.importorskip("ai_edge_quantizer")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from ai_edge_litert.tools import flatbuffer_utils  # noqa: E402
from ai_edge_quantizer import qtyping, recipe_manager  # noqa: E402
from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor  # noqa: E402

from tf_mistral.config import MistralConfig  # noqa: E402
from tf_mistral.export import flatbuffer_edit, tflite, tflite_weights  # noqa: E402

CACHE, PREFILL = 16, 8


@pytest.fixture(scope="module")
def graph():
    """`(config, signature functions, folded float32 weights {input name: array})` of tiny_window."""
    folder = fixture_path("tiny_window")
    config, read = tflite.weight_reader(folder)
    functions = tflite.signature_functions(tflite.weightless_model(config), CACHE, [PREFILL])
    weights = {w.input_name: tflite_weights.float_weight(read, w) for w in tflite_weights.weight_plan(config)}
    return config, functions, weights


def reference_file(graph, quantize, path, block_size=None):
    """Today's export: the TF converter on the graph with constant weights (+ ai-edge-quantizer for int4)."""
    _, functions, weights = graph
    constants = {name: tf.constant(value) for name, value in weights.items()}
    wrapped = {}
    for name, function in functions.items():
        specs = {k: v for k, v in function.structured_input_signature[0][0].items() if not k.startswith("weight_")}

        def call(inputs, function=function):
            return function({**inputs, **constants})

        wrapped[name] = tf.function(call, input_signature=[specs]).get_concrete_function()
    saved = str(path) + "_saved_model"
    tf.saved_model.save(tf.Module(), saved, signatures=wrapped)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(wrapped))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize in ("fp16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    data = converter.convert()
    if quantize == "int4":
        data = quantize_int4_with_ai_edge_quantizer(data, block_size)
    with open(path, "wb") as f:
        f.write(data)
    return path


def quantize_int4_with_ai_edge_quantizer(data, block_size):
    """The int4 recipe of the previous exporter: GATHERs rewritten to EMBEDDING_LOOKUP, then
    blockwise int4 weights on every FULLY_CONNECTED and EMBEDDING_LOOKUP."""
    model = flatbuffer_utils.read_model_from_bytearray(memoryview(data))
    for number, subgraph in enumerate(model.subgraphs):
        operators = []
        for op in subgraph.operators:
            table = subgraph.tensors[op.inputs[0]]
            if flatbuffer_edit.builtin_name(model, op) == "GATHER" and model.buffers[table.buffer].data is not None:
                operators += flatbuffer_edit.embedding_lookup_ops(model, subgraph, op, f"lookup_{number}")
            else:
                operators.append(op)
        subgraph.operators = operators
    recipes = recipe_manager.RecipeManager()
    for operation in (qtyping.TFLOperationName.FULLY_CONNECTED, qtyping.TFLOperationName.EMBEDDING_LOOKUP):
        recipes.add_dynamic_config(regex=".*", operation_name=operation, num_bits=4,
                                   granularity=qtyping.QuantGranularity[f"BLOCKWISE_{block_size}"])
    packed = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return bytes(quantizer.Quantizer(packed, recipes.get_quantization_recipe()).quantize().quantized_model)


def run(path):
    """Decode logits `[4, vocab]` and the final caches after a prefill of 8 tokens and 4 decode steps."""
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    prefill = interpreter.get_signature_runner(f"prefill_{PREFILL}")
    decode = interpreter.get_signature_runner("decode")
    caches = {name: np.zeros(d["shape"], np.float32) for name, d in prefill.get_input_details().items()
              if name.startswith("kv_cache")}
    tokens = np.random.default_rng(0).integers(0, 1000, (1, PREFILL)).astype(np.int32)
    out = prefill(tokens=tokens, input_pos=np.arange(PREFILL, dtype=np.int32), **caches)
    caches = {k: v for k, v in out.items() if k.startswith("kv_cache")}
    logits, token = [], 7
    for step in range(4):
        out = decode(tokens=np.array([[token]], np.int32), input_pos=np.array([PREFILL + step], np.int32), **caches)
        caches = {k: v for k, v in out.items() if k.startswith("kv_cache")}
        logits.append(out["logits"].reshape(-1))
        token = int(np.argmax(logits[-1]))
    return np.stack(logits), caches


@pytest.mark.slow
# fp16: the converter also stores the graph's own small constants (the rotary frequencies) in
# float16, where ours stay float32; the weights are the same float16 values.
@pytest.mark.parametrize("quantize, block_size, tolerance", [
    ("none", None, 1e-5), ("fp16", None, 1e-2), ("int8", None, 1e-3), ("int4", 32, 1e-3), ("int4", 64, 1e-3)])
def test_streamed_file_gives_the_logits_of_the_converter_file(graph, tmp_path, quantize, block_size, tolerance):
    ours = tmp_path / "ours.tflite"
    tflite.export_tflite(fixture_path("tiny_window"), ours, quantize=quantize, prefill_lengths=[PREFILL],
                         cache_length=CACHE, progress=False, int4_block_size=block_size)
    theirs = reference_file(graph, quantize, tmp_path / "theirs.tflite", block_size)
    (our_logits, our_cache), (their_logits, their_cache) = run(ours), run(theirs)
    np.testing.assert_allclose(our_logits, their_logits, atol=tolerance, rtol=0)
    for name in their_cache:
        np.testing.assert_allclose(our_cache[name], their_cache[name], atol=tolerance, rtol=0, err_msg=name)


def test_the_exporter_never_allocates_the_models_weights():
    model = tflite.weightless_model(MistralConfig.from_json_file(fixture_path("tiny_window")))
    assert model.weights and all(variable._value is None for variable in model.weights)


@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_int4_blocks_equal_ai_edge_quantizers(graph, block_size):
    weight = graph[2]["weight_model_layers_0_mlp_down_proj_weight"]  # [64, 128]
    packed, scales = tflite_weights.encode_int4_blocks(weight, block_size)
    blocks = weight.reshape(weight.shape[0], -1, block_size)
    zero_point, scale = uniform_quantize_tensor.tensor_zp_scale_from_min_max(
        blocks.min(axis=2), blocks.max(axis=2), 4, True, qtyping.QuantGranularity[f"BLOCKWISE_{block_size}"])
    params = qtyping.UniformQuantParams(num_bits=4, quantized_dimension=1, scale=scale, zero_point=zero_point,
                                        symmetric=True, block_size=block_size)
    expected = uniform_quantize_tensor.uniform_quantize(weight, params, is_blockwise_quant=True).reshape(-1)
    unpacked = np.stack([packed & 0xF, packed >> 4], axis=1).reshape(-1).astype(np.int8)
    np.testing.assert_array_equal(np.where(unpacked > 7, unpacked - 16, unpacked), expected)
    np.testing.assert_array_equal(scales, scale.astype(np.float16))


def test_weight_inputs_are_gone_from_every_signature(tmp_path):
    path = tmp_path / "m.tflite"
    tflite.export_tflite(fixture_path("tiny_window"), path, prefill_lengths=[PREFILL], cache_length=CACHE,
                         progress=False)
    model = schema.Model.GetRootAs(open(path, "rb").read(), 0)
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        names = [signature.Inputs(j).Name().decode() for j in range(signature.InputsLength())]
        assert not [name for name in names if name.startswith("weight_")]
    assert os.path.getsize(path) > 900_000  # the weights follow the flatbuffer
