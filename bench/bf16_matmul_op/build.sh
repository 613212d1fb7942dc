#!/bin/bash
# Build the Bf16MatMul TensorFlow custom op into bf16_matmul.so.
set -euo pipefail
cd "$(dirname "$0")"
PY="$(cd ../.. && pwd)/.venv/bin/python"
TF_CFLAGS=$($PY -c 'import tensorflow as tf; print(" ".join(tf.sysconfig.get_compile_flags()))' 2>/dev/null)
TF_LFLAGS=$($PY -c 'import tensorflow as tf; print(" ".join(tf.sysconfig.get_link_flags()))' 2>/dev/null)
set -x
g++ -O3 -mavx2 -mfma -mf16c -std=c++17 -shared -fPIC -Wno-deprecated-declarations -Wno-interference-size \
    bf16_matmul.cc -o bf16_matmul.so.tmp ${TF_CFLAGS} ${TF_LFLAGS}
mv -f bf16_matmul.so.tmp bf16_matmul.so
