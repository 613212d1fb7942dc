"""Safetensors files on disk: read a tensor on demand, write a checkpoint that is never half there.

The format is an 8-byte header length, a JSON header and raw little-endian data; it is read with
plain file I/O (numpy and ml_dtypes only, no TensorFlow), one tensor or a block of its rows at a
time, and nothing is memory-mapped.

Writing a checkpoint over an existing one (`write_checkpoint`) leaves the old set or the new
set, never a mix, whenever the process dies: the new files are written beside the old ones under
temporary names, and the switch is one `os.replace` of the file the loader reads first (the index
of a sharded checkpoint, or `model.safetensors`). Every file of a save carries the same save id in
its metadata, and `open_checkpoint` refuses a set whose shards come from different saves.
"""

from collections.abc import Callable, Mapping, Sequence
import json
import os
import re
import uuid

import ml_dtypes
import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from tf_mistral.arguments import parse_size
from tf_mistral.atomic import pid_alive, remove, write_json

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SAVE_ID = "tf_mistral_save_id"  # metadata key: the save a file belongs to
_WEIGHTS_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")
_LEFTOVER = re.compile(
    r"(?P<name>config\.json|model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?)\.(tmp|link)-(?P<pid>\d+)"
)

DTYPES = {
    "F64": np.dtype("float64"),
    "F32": np.dtype("float32"),
    "F16": np.dtype("float16"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("int64"),
    "I32": np.dtype("int32"),
    "I16": np.dtype("int16"),
    "I8": np.dtype("int8"),
    "U8": np.dtype("uint8"),
    "BOOL": np.dtype("bool"),
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this model; the message names the tensor."""


# ----------------------------------------------------------------------------------------------
# Reading


class SafetensorsFile:
    """The header of one safetensors file, and its tensors read on demand.

    Attributes:
        tensors: `{name: (numpy dtype, shape, begin, end)}`, byte offsets into the data section.
        metadata: the header's `__metadata__` (`{}` when absent).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is not a safetensors file: it has only {size} bytes")
            header_length = int.from_bytes(head, "little")
            if header_length > size - 8 or header_length > 100_000_000:
                raise CheckpointError(
                    f"{path} is truncated or not a safetensors file (header of {header_length} bytes)"
                )
            try:
                header = json.loads(f.read(header_length))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise CheckpointError(f"{path} has a corrupt safetensors header: {error}") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + header_length
        self.tensors = {}
        for name, info in header.items():
            try:
                dtype = DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry {info!r}") from None
            if end - begin != dtype.itemsize * int(np.prod(shape)):
                raise CheckpointError(
                    f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape} {info['dtype']}"
                )
            if self.data_start + end > size:
                raise CheckpointError(
                    f"{path} is truncated: tensor {name!r} ends at byte {self.data_start + end} "
                    f"but the file has {size} bytes; download or copy it again"
                )
            self.tensors[name] = (dtype, shape, begin, end)

    def read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The tensor, or its rows `rows = (start, stop)` along the first axis, as a numpy array
        in its stored dtype; the file is read straight into the array."""
        dtype, shape, begin, end = self.tensors[name]
        if rows is not None:
            row_bytes = (end - begin) // max(shape[0], 1)
            begin, end = begin + rows[0] * row_bytes, begin + rows[1] * row_bytes
            shape = (rows[1] - rows[0],) + shape[1:]
        array = np.empty(shape, dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            count = f.readinto(array.reshape(-1).view(np.uint8))
        if count != end - begin:
            raise CheckpointError(f"{self.path} is truncated inside tensor {name!r}")
        return array

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self.tensors[name]
        return end - begin


def open_checkpoint(directory: str | os.PathLike) -> dict[str, SafetensorsFile]:
    """`{tensor name: SafetensorsFile}` for a single-file or sharded HF checkpoint folder.

    The index, when there is one, is read first (as HF does). A sharded set whose index and shards
    carry different save ids (shards of two saves) is refused."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint folder {directory!r} does not exist")
    index_path = os.path.join(directory, INDEX_FILE)
    single_path = os.path.join(directory, SINGLE_FILE)
    if os.path.exists(index_path):
        with open(index_path, encoding="utf-8") as f:
            try:
                index = json.load(f)
                weight_map = index["weight_map"]
            except (json.JSONDecodeError, KeyError) as error:
                raise CheckpointError(f"{index_path} is not a safetensors index: {error}") from None
        files = {}
        for file_name in sorted(set(weight_map.values())):
            path = os.path.join(directory, file_name)
            if not os.path.exists(path):
                raise CheckpointError(f"{INDEX_FILE} lists {file_name} but it is not in {directory}")
            files[file_name] = SafetensorsFile(path)
        _check_one_save(directory, (index.get("metadata") or {}).get(SAVE_ID), files)
        located = {}
        for name, file_name in weight_map.items():
            if name not in files[file_name].tensors:
                raise CheckpointError(f"{INDEX_FILE} puts {name!r} in {file_name}, which does not hold it")
            located[name] = files[file_name]
        return located
    if os.path.exists(single_path):
        shard = SafetensorsFile(single_path)
        return {name: shard for name in shard.tensors}
    pickles = [f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    if pickles:
        raise CheckpointError(
            f"{directory} holds only pickle checkpoints ({', '.join(sorted(pickles))}), which can run "
            "arbitrary code when loaded and are not read here. Convert them once with HF transformers: "
            "`MistralForCausalLM.from_pretrained(dir).save_pretrained(out_dir, safe_serialization=True)`"
        )
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")


def _check_one_save(directory, save_id, files):
    """Raises when the index names a save (ours do) and a shard belongs to another one."""
    if save_id is None:
        return  # written by another tool: nothing to compare
    strays = sorted(name for name, shard in files.items() if shard.metadata.get(SAVE_ID) != save_id)
    if strays:
        raise CheckpointError(
            f"{directory} mixes shards of two saves: {', '.join(strays)} do not belong to the save "
            f"that wrote {INDEX_FILE}. Were files copied in by hand? Save or copy the checkpoint again."
        )


# ----------------------------------------------------------------------------------------------
# Writing


class TensorEntry:
    """One tensor to write: its name, numpy dtype and shape, and `fetch()` giving the C-contiguous
    array (called once, when its turn comes, so a save holds one tensor at a time)."""

    def __init__(self, name: str, dtype: npt.DTypeLike, shape: Sequence[int], fetch: Callable[[], np.ndarray]) -> None:
        self.name, self.dtype, self.shape, self.fetch = name, np.dtype(dtype), tuple(shape), fetch
        self.nbytes = self.dtype.itemsize * int(np.prod(self.shape))


def _plan_shards(entries, max_shard_bytes):
    """Consecutive entries grouped so that a shard exceeds `max_shard_bytes` only when one tensor does."""
    shards, current, current_bytes = [], [], 0
    for entry in entries:
        if current and current_bytes + entry.nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(entry)
        current_bytes += entry.nbytes
    if current:
        shards.append(current)
    return shards


def _write_file(path, entries, metadata, bar):
    """Writes one safetensors file at `path` (a temporary name: the caller publishes it), flushed
    to disk; a partial file is removed when the write fails (a full disk, an interrupt)."""
    header, offset = {"__metadata__": metadata}, 0
    for entry in entries:
        header[entry.name] = {"dtype": DTYPE_NAMES[entry.dtype], "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    try:
        with open(path, "wb") as f:
            f.write(len(header_bytes).to_bytes(8, "little"))
            f.write(header_bytes)
            for entry in entries:
                array = entry.fetch()
                if array.dtype != entry.dtype or array.shape != entry.shape:
                    raise ValueError(
                        f"{entry.name}: got {array.dtype}{array.shape}, planned {entry.dtype}{entry.shape}"
                    )
                f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
                bar.update(entry.nbytes)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        remove(path)
        raise


def remove_leftovers(directory: str | os.PathLike) -> None:
    """Removes the temporary files (`NAME.tmp-PID`, `NAME.link-PID`) that saves killed before
    they finished left in `directory`, unless the live index still names them or their process
    is still running."""
    index_path = os.path.join(directory, INDEX_FILE)
    live = set()
    if os.path.exists(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                live = set(json.load(f).get("weight_map", {}).values())
        except (OSError, ValueError):
            live = set()
    for file_name in os.listdir(directory):
        match = _LEFTOVER.fullmatch(file_name)
        if match and file_name not in live and not pid_alive(int(match["pid"])):
            remove(os.path.join(directory, file_name))


def write_tensors(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes `{name: numpy array}` as one safetensors file, atomically (temporary file, then rename)."""
    entries = [TensorEntry(name, a.dtype, a.shape, lambda a=a: a) for name, a in arrays.items()]
    temporary = f"{path}.tmp-{os.getpid()}"
    with tqdm(disable=True) as bar:
        _write_file(temporary, entries, {"format": "pt"}, bar)
    os.replace(temporary, path)


def write_checkpoint(
    directory: str | os.PathLike, entries: Sequence[TensorEntry], max_shard_size: int | str = "5GB",
    progress: bool = True,
) -> int:
    """Writes `entries` (`TensorEntry` list, in order) as HF safetensors in `directory`: one
    `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` of at most `max_shard_size`
    each plus `model.safetensors.index.json`. Returns the weight bytes written.

    Safe over an existing checkpoint: until the switch the old set is what loads, after it the new
    one, and a process killed anywhere leaves one of the two (plus temporary files that the next
    save removes). Shards are first written as `NAME.tmp-PID`; the switch to a sharded set is
    an index naming those files; then each is hard-linked to its final name (over an old shard of
    the same name, which nothing reads any more) and a second index names the final files.
    """
    max_shard_bytes = parse_size(max_shard_size)
    os.makedirs(directory, exist_ok=True)
    remove_leftovers(directory)
    shards = _plan_shards(entries, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    save_id = uuid.uuid4().hex
    metadata = {"format": "pt", SAVE_ID: save_id}
    total = sum(entry.nbytes for entry in entries)
    staged = {name: os.path.join(directory, f"{name}.tmp-{os.getpid()}") for name in names}
    index_names_staged = False  # the live index names the staged files: they must stay
    try:
        with tqdm(total=total, unit="B", unit_scale=True, desc="saving weights", disable=not progress) as bar:
            for name, shard in zip(names, shards):
                _write_file(staged[name], shard, metadata, bar)
        if len(shards) == 1:
            os.replace(staged[SINGLE_FILE], os.path.join(directory, SINGLE_FILE))
            remove(os.path.join(directory, INDEX_FILE))  # the switch when the old set was sharded
        else:
            index = {"metadata": {"total_size": total, SAVE_ID: save_id}}
            index["weight_map"] = {e.name: os.path.basename(staged[n]) for n, s in zip(names, shards) for e in s}
            write_json(os.path.join(directory, INDEX_FILE), index)  # the switch
            index_names_staged = True
            for name in names:
                link = os.path.join(directory, f"{name}.link-{os.getpid()}")
                os.link(staged[name], link)
                os.replace(link, os.path.join(directory, name))
            index["weight_map"] = {e.name: n for n, s in zip(names, shards) for e in s}
            write_json(os.path.join(directory, INDEX_FILE), index)
            index_names_staged = False
    finally:
        if not index_names_staged:
            for path in staged.values():
                remove(path)
    for stale in os.listdir(directory):
        if _WEIGHTS_FILE.fullmatch(stale) and stale not in names and stale != INDEX_FILE:
            remove(os.path.join(directory, stale))
    remove_leftovers(directory)  # those a killed save's live index named until now
    return total
