"""Exporters: SavedModel for TF Serving, TFLite / LiteRT."""

from tf_mistral.export.tflite import export_tflite  # noqa: F401  (imports numpy only)
from tf_mistral.export.saved_model import export_saved_model  # noqa: F401  (imports the standard library only)
