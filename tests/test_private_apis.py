"""The private Keras and TensorFlow APIs tf_mistral relies on still behave as it relies on them: a
Keras or TensorFlow release that changes one fails here, by name, before it breaks a model."""

import keras
import numpy as np
import tensorflow as tf

from tf_mistral import keras_internals


def small_model():
    inputs = keras.Input((4,))
    block = keras.Sequential([keras.layers.Dense(3, name="inner")], name="block")
    return keras.Model(inputs, keras.layers.Dense(2, name="outer")(block(inputs)))


def test_all_layers_walks_nested_layers():
    model = small_model()
    names = [layer.name for layer in keras_internals.all_layers(model, include_self=False)]
    assert {"block", "inner", "outer"} <= set(names)
    assert keras_internals.all_layers(model)[0] is model


def test_kernel_variable_is_the_variable_under_lora_and_int8():
    dense = keras.layers.Dense(3)
    dense.build((None, 4))
    assert keras_internals.kernel_variable(dense) is dense.kernel
    dense.enable_lora(2)
    assert keras_internals.kernel_variable(dense).shape == (4, 3)
    assert keras_internals.kernel_variable(dense) is not dense.kernel  # the merge, a new tensor
    quantized = keras.layers.Dense(3)
    quantized.build((None, 4))
    quantized.quantize("int8")
    assert keras_internals.kernel_variable(quantized).dtype == "int8"


def test_embeddings_variable_is_the_int8_table_after_quantize():
    embedding = keras.layers.Embedding(10, 4)
    embedding.build((None,))
    assert keras_internals.embeddings_variable(embedding) is embedding.embeddings
    embedding.quantize("int8")
    assert keras_internals.embeddings_variable(embedding).dtype == "int8"


def test_keras_tree_registration_is_where_model_outputs_expect_it():
    from keras.src.tree import register_tree_node_class  # noqa: F401  (models/outputs.py)

    from tf_mistral.models.outputs import ModelOutput

    output = ModelOutput(logits=np.zeros(2), loss=np.ones(()))
    assert keras.tree.flatten(output)[0].shape == (2,)


def test_tf_data_keeps_the_dataset_class_a_declared_length_wraps():
    from tensorflow.python.data.ops import dataset_ops  # training/data.py

    from tf_mistral.training.data import _DeclaredLength

    assert hasattr(dataset_ops, "UnaryUnchangedStructureDataset")
    dataset = _DeclaredLength(tf.data.Dataset.range(3).repeat(), 5)
    assert int(dataset.cardinality()) == 5


def test_the_tflite_converter_still_has_the_buffer_offset_switch():
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(lambda x: x + 1.0, input_signature=[tf.TensorSpec([1], tf.float32)]).get_concrete_function()]
    )
    assert hasattr(converter, "_experimental_use_buffer_offset")  # export/tflite.py sets it
