"""`tf.distribute.MirroredStrategy` on two logical CPU devices trains like one device.

Logical devices must be configured before TensorFlow initialises them, so the runs happen in a
subprocess. The batches are padded unevenly, so the two replicas hold different numbers of
labelled tokens: a per-replica mean would give another loss; the global normalisation must not.
The last batch has no labelled token: both runs skip it (no optimizer step).
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import fixture_path

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from tf_mistral import TFMistralForCausalLM

    path, lora = sys.argv[1], sys.argv[2] == "lora"
    ids = np.random.default_rng(0).integers(3, 1000, (12, 24)).astype("int32")
    mask = np.ones_like(ids)
    mask[0, 6:] = 0
    mask[1, 10:] = 0  # replica 0 of the first batch holds far fewer real tokens than replica 1
    mask[6, 20:] = 0
    mask[8:] = 0  # a batch of padding alone: nothing to learn

    def run(strategy):
        with strategy.scope():
            model = TFMistralForCausalLM.from_pretrained(path, progress=False)
            if lora:
                model.enable_lora(4)
                for i, w in enumerate(model.trainable_weights):
                    w.assign(np.random.default_rng(i).normal(0, 0.1, w.shape).astype("float32"))
            model.compile(optimizer=keras.optimizers.AdamW(3e-3))
        data = tf.data.Dataset.from_tensor_slices({"input_ids": ids, "attention_mask": mask}).batch(4)
        history = model.fit(data, epochs=3, verbose=0).history
        weights = [w.numpy().tolist() for w in model.trainable_weights]
        return history, weights, strategy.num_replicas_in_sync, int(model.optimizer.iterations.numpy())

    single = run(tf.distribute.get_strategy())
    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    print(json.dumps({"single": single, "mirrored": mirrored}))
    """
)


def run_both(lora):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, fixture_path("tiny_window"), "lora" if lora else "full"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_mirrored_strategy_on_two_devices_matches_one_device(lora):
    runs = run_both(lora)
    (single, single_weights, one, single_steps), (mirrored, mirrored_weights, two, mirrored_steps) = (
        runs["single"], runs["mirrored"]
    )
    assert (one, two) == (1, 2)
    assert single_steps == mirrored_steps == 3 * 2  # the batch without labels is no step
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(mirrored["perplexity"], single["perplexity"], rtol=1e-4)
    assert single["loss"][-1] < single["loss"][0]
    for a, b in zip(single_weights, mirrored_weights):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=2e-5)
