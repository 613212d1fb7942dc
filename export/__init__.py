"""Exporters and runtimes of exported files: SavedModel for TF Serving, TFLite / LiteRT.

This folder sits at the top of the checkout (`export/`, as the project's design card lays it
out) and is installed as the subpackage `tf_mistral.export` (`package_dir` in setup.py): import
it as `from tf_mistral.export import tflite`. Nothing is imported here, so that importing one
module (e.g. `tflite_runner`, which needs LiteRT but not TensorFlow) does not load the others.

    saved_model.py, serving_signatures.py, serving_rest.py   TF Serving export and requests
    tflite.py, tflite_options.py, tflite_weights.py,
    tflite_assembly.py, flatbuffer_edit.py                   TFLite export (weights streamed)
    tflite_runner.py, litertlm.py                            running .tflite / .litertlm files
"""
