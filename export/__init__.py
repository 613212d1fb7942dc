"""Exporters: SavedModel for TF Serving, TFLite / LiteRT (the LiteRT runtime that runs their files
is `tf_mistral.tflite_runner`).

This folder sits at the top of the checkout (`export/`, as the project's design card lays it
out) and is installed as the subpackage `tf_mistral.export` (`package_dir` in setup.py): import
it as `from tf_mistral.export import tflite`. Nothing is imported here, so that importing one
module (e.g. `litertlm`) does not load the others.

    saved_model.py, serving_signatures.py, serving_rest.py   TF Serving export and requests
    tflite.py, tflite_options.py, tflite_weights.py,
    tflite_assembly.py, flatbuffer_edit.py                   TFLite export (weights streamed)
    litertlm.py                                              the .litertlm bundle (LiteRT-LM)
"""
