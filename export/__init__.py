"""Exporters: SavedModel for TF Serving, TFLite / LiteRT."""
