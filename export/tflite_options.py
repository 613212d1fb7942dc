"""The choices of a TFLite export, in a module of the standard library alone, so that the
command line can list them without importing TensorFlow."""

QUANTIZE_OPTIONS = ("none", "fp16", "int8", "int4")
INT4_BLOCK_SIZE = 32  # int4 values per float16 scale, along a weight's input axis
DEFAULT_PREFILL_LENGTHS = (32, 128, 512)
