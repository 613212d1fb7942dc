"""tf_mistral: Mistral-7B for TensorFlow / Keras 3."""
