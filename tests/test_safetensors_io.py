"""Writing a checkpoint over an existing one: killed at every step of a save, the folder loads as
the old checkpoint or the new one, never a mix; failed writes leave no temporary files.

The kill tests run the save in a child process (numpy only, no TensorFlow) that SIGKILLs itself
at its n-th file-system step (a tensor written, a rename, a link, a removal), for every n."""

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tf_mistral import safetensors_io
from tf_mistral.safetensors_io import INDEX_FILE, SINGLE_FILE, CheckpointError, TensorEntry

NAMES = [f"t{i}" for i in range(4)]
TENSOR_BYTES = 64 * 4  # float32 [64]

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from tf_mistral import safetensors_io

    directory, value, shards, kill_at = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    steps = 0

    def step(function):
        def counted(*args, **kwargs):
            global steps
            steps += 1
            if steps == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return counted

    os.replace, os.link, os.remove = step(os.replace), step(os.link), step(os.remove)
    entries = [
        safetensors_io.TensorEntry(f"t{i}", np.float32, (64,), step(lambda: np.full(64, value, np.float32)))
        for i in range(4)
    ]
    safetensors_io.write_checkpoint(directory, entries, max_shard_size=4 * 64 * 4 // shards, progress=False)
    print(steps)
    """
)


def save_in_child(directory, value, shards, kill_at=0):
    """Runs a save of four tensors filled with `value` in `shards` files; returns the number of
    steps it took (or None when it was killed at step `kill_at`)."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(directory), str(value), str(shards), str(kill_at)],
        capture_output=True, text=True, timeout=120,
    )
    if result.returncode == -9:
        return None
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def entries(value):
    return [TensorEntry(name, np.float32, (64,), lambda: np.full(64, value, np.float32)) for name in NAMES]


def save(directory, value, shards):
    """The save `save_in_child` makes, in this process and whole."""
    safetensors_io.write_checkpoint(
        directory, entries(value), max_shard_size=4 * TENSOR_BYTES // shards, progress=False
    )


def loaded_values(directory):
    """The value each tensor of the checkpoint holds (each tensor is one repeated value)."""
    located = safetensors_io.open_checkpoint(str(directory))
    values = {}
    for name in NAMES:
        array = located[name].read(name)
        assert np.all(array == array[0]), name
        values[name] = float(array[0])
    return values


@pytest.mark.slow
@pytest.mark.parametrize("old_shards, new_shards", [(2, 2), (2, 1), (1, 2)])
def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_checkpoint(tmp_path, old_shards, new_shards):
    steps = save_in_child(tmp_path / "probe", 2.0, new_shards)
    outcomes = set()
    for kill_at in range(1, steps + 1):
        folder = tmp_path / f"kill_{kill_at}"
        save(folder, 1.0, old_shards)
        assert save_in_child(folder, 2.0, new_shards, kill_at) is None
        values = set(loaded_values(folder).values())
        assert values in ({1.0}, {2.0}), f"killed at step {kill_at} of {steps}: a mix {values}"
        outcomes |= values
        save(folder, 3.0, new_shards)  # the next save cleans up after the killed one
        assert set(loaded_values(folder).values()) == {3.0}
        assert not [f for f in os.listdir(folder) if ".tmp-" in f or ".link-" in f]
    assert outcomes == {1.0, 2.0}  # the kills hit both sides of the switch




def test_a_full_disk_during_a_save_keeps_the_old_checkpoint_and_no_temporary_file(tmp_path):
    safetensors_io.write_checkpoint(tmp_path, entries(1.0), max_shard_size=2 * TENSOR_BYTES, progress=False)
    before = sorted(os.listdir(tmp_path))

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device")

    failing = entries(2.0)
    failing[3].fetch = full_disk
    with pytest.raises(OSError, match="No space"):
        safetensors_io.write_checkpoint(tmp_path, failing, max_shard_size=2 * TENSOR_BYTES, progress=False)
    assert sorted(os.listdir(tmp_path)) == before
    assert set(loaded_values(tmp_path).values()) == {1.0}


def test_a_single_file_save_that_fails_leaves_no_temporary_file(tmp_path):
    failing = entries(2.0)
    failing[2].fetch = lambda: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        safetensors_io.write_checkpoint(tmp_path, failing, progress=False)
    assert os.listdir(tmp_path) == []


def test_shards_of_two_saves_are_refused_by_the_loader(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, value in ((first, 1.0), (second, 2.0)):
        safetensors_io.write_checkpoint(folder, entries(value), max_shard_size=2 * TENSOR_BYTES, progress=False)
    shard = "model-00002-of-00002.safetensors"
    os.replace(second / shard, first / shard)
    with pytest.raises(CheckpointError, match=rf"mixes shards of two saves: {shard}"):
        safetensors_io.open_checkpoint(str(first))


def test_an_index_of_another_tool_is_read_without_save_ids(tmp_path):
    safetensors_io.write_checkpoint(tmp_path, entries(1.0), max_shard_size=2 * TENSOR_BYTES, progress=False)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    del index["metadata"][safetensors_io.SAVE_ID]
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    assert set(loaded_values(tmp_path).values()) == {1.0}


def test_leftovers_of_a_running_save_are_kept(tmp_path):
    leftover = tmp_path / f"{SINGLE_FILE}.tmp-{os.getpid()}"
    leftover.write_bytes(b"partial")
    safetensors_io.remove_leftovers(str(tmp_path))
    assert leftover.exists()


def test_a_bad_shard_size_is_refused_before_the_folder_is_created(tmp_path):
    with pytest.raises(ValueError, match="lots"):
        safetensors_io.write_checkpoint(tmp_path / "new", entries(1.0), max_shard_size="lots", progress=False)
    with pytest.raises(ValueError, match="positive"):
        safetensors_io.write_checkpoint(tmp_path / "new", entries(1.0), max_shard_size=0, progress=False)
    assert not (tmp_path / "new").exists()
