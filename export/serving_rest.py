"""TF Serving's REST predict API, answered in this process from a loaded SavedModel.

`predict(loaded, body)` takes the JSON body of `POST /v1/models/NAME:predict` and returns the JSON
reply that tensorflow_model_server gives, for both request forms:
    row ("instances"): a list with one entry per example; each entry is a dict of inputs, or a bare
        value when the signature has one input. Every input needs the batch dimension, so the
        signatures with scalar knobs take the columnar form. Reply: {"predictions": [...]}, one
        entry per example (a dict of outputs, or the bare value when there is one output).
    columnar ("inputs"): a dict of inputs (or a bare value for one input), each a whole tensor.
        Reply: {"outputs": {...}} (or the bare value for one output).
Binary strings go in and out as {"b64": "..."}; text outputs are returned as JSON strings.
InvalidArgument errors become {"error": message}, as the server returns them (HTTP 400).
Use it to try requests without a server, and to check the requests in docs/serving.md.
"""

import base64
from typing import Any

import numpy as np
import tensorflow as tf


def _decode_json_value(value):
    """{"b64": ...} -> bytes, recursively; other JSON values unchanged."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_json_value(item) for item in value]
    return value


def _to_json(value, name):
    """numpy value -> JSON value (strings as text; `*_bytes` outputs and non-UTF-8 bytes as b64)."""
    if isinstance(value, np.ndarray):
        return [_to_json(item, name) for item in value] if value.ndim else _to_json(value.item(), name)
    if isinstance(value, bytes):
        if not name.endswith("_bytes"):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tensor(value, spec):
    return tf.constant(
        np.asarray(_decode_json_value(value), dtype=object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)
    )


def _status_message(message):
    """The line of an InvalidArgument message that the C++ runtime reports (Python adds a preamble)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("assertion failed")), lines[0] if lines else "")


def predict(loaded: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The reply dict for a REST predict request `body` (dict) to the SavedModel `loaded`."""
    signature = loaded.signatures[body.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]
    try:
        if "instances" in body:
            rows = body["instances"]
            if len(specs) == 1 and not all(isinstance(row, dict) for row in rows):
                rows = [{next(iter(specs)): row} for row in rows]
            inputs = {name: _tensor([row[name] for row in rows], spec) for name, spec in specs.items()}
        else:
            columns = body["inputs"]
            if len(specs) == 1 and not isinstance(columns, dict):
                columns = {next(iter(specs)): columns}
            inputs = {name: _tensor(columns[name], spec) for name, spec in specs.items()}
        outputs = {name: tensor.numpy() for name, tensor in signature(**inputs).items()}
    except tf.errors.InvalidArgumentError as error:
        return {"error": _status_message(error.message)}
    if "instances" in body:
        rows = [{name: _to_json(value[i], name) for name, value in sorted(outputs.items())} for i in range(len(rows))]
        return {"predictions": [next(iter(row.values())) for row in rows] if len(outputs) == 1 else rows}
    columns = {name: _to_json(value, name) for name, value in sorted(outputs.items())}
    return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}
