"""Generation: the compiled prefill/decode loop, samplers and streaming."""
