"""The choices of a TFLite export, in a module of the standard library alone, so that the
command line can list them without importing TensorFlow."""

QUANTIZE_OPTIONS = ("none", "fp16", "int8", "int4")
# int4 values per float16 scale, along a weight's input axis: ai-edge-quantizer's blockwise recipes.
# Larger blocks decode faster with XNNPACK on CPU and cost a little accuracy (docs/tflite.md).
INT4_BLOCK_SIZES = (32, 64, 128, 256)
DEFAULT_INT4_BLOCK_SIZE = 128
DEFAULT_PREFILL_LENGTHS = (32, 128, 512)
