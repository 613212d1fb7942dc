"""Writes the request / reply examples of docs/serving.md from the tiny fixture model.

    .venv/bin/python scripts/serving_examples.py

Exports tests/fixtures/tiny_window (random weights, so the text is gibberish) with the tiny test
tokenizer and tiny_seqcls, answers each REST request with `tf_mistral.export.serving_rest.predict`
(TF Serving's REST semantics) and each gRPC request with the same signature, printed as the
`PredictResponse` TF Serving sends. Replaces the text between the examples markers.
"""

import json
import pathlib
import tempfile

from google.protobuf import text_format
import tensorflow as tf

from tf_mistral.export import saved_model, serving_rest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "serving.md"
START, END = "<!-- examples:start -->", "<!-- examples:end -->"
FIXTURES = ROOT / "tests" / "fixtures"
KNOBS = {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 0}
REST = [
    ("`serving_default`, row form: one prompt per instance, greedy, up to the export's max_new_tokens",
     "mistral", {"instances": ["Hello world", "The quick brown fox"]}),
    ("`generate_text`, columnar form: the knobs are scalars, so this signature takes `inputs`",
     "mistral", {"signature_name": "generate_text",
                 "inputs": {"prompts": ["Hello world"], **dict(KNOBS, temperature=0.7, top_p=0.9, top_k=50, seed=1)}}),
    ("`chat`: one conversation per row; role \"\" pads the shorter ones",
     "mistral", {"signature_name": "chat", "inputs": {
         "roles": [["system", "user"], ["user", ""]],
         "contents": [["Answer briefly.", "What is TF Serving?"], ["Hi!", ""]], **KNOBS}}),
    ("`generate`: token ids in, token ids out (rows padded on either side)",
     "mistral", {"signature_name": "generate", "inputs": {
         "input_ids": [[1, 533, 646], [0, 1, 259]], "attention_mask": [[1, 1, 1], [0, 1, 1]], **KNOBS}}),
    ("A bad request: InvalidArgument, HTTP 400",
     "mistral", {"signature_name": "generate_text", "inputs": {"prompts": ["Hello"], **dict(KNOBS, max_new_tokens=0)}}),
    ("`classify` (a sequence-classification export; also its `serving_default`)",
     "classifier", {"instances": ["I love it", "This is terrible"]}),
]


def _json(value, indent=""):
    """JSON with one line per list of numbers or strings (readable token id rows)."""
    inner = indent + "    "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(key)}: {_json(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        return "[\n" + ",\n".join(inner + _json(item, inner) for item in value) + f"\n{indent}]"
    return json.dumps(value, ensure_ascii=False)


def _rest_block(title, model, body, reply):
    return "\n".join([
        f"#### {title}", "",
        "```bash",
        f"curl -s -X POST http://localhost:8501/v1/models/{model}:predict -d '{json.dumps(body, ensure_ascii=False)}'",
        "```", "", "```json", _json(reply), "```", "",
    ])


def _grpc_reply(model_name, signature_name, outputs):
    """A PredictResponse in protobuf text format (what `print(response)` shows)."""
    lines = [f'model_spec {{\n  name: "{model_name}"\n  version {{\n    value: 1\n  }}\n'
             f'  signature_name: "{signature_name}"\n}}']
    for name in sorted(outputs):
        proto = text_format.MessageToString(tf.make_tensor_proto(outputs[name].numpy()), as_utf8=True)
        body = "\n".join("    " + line for line in proto.strip().splitlines())
        lines.append(f'outputs {{\n  key: "{name}"\n  value {{\n{body}\n  }}\n}}')
    return "\n".join(lines)


GRPC_CLIENT = '''import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # pip install tensorflow-serving-api

stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("localhost:8500"))
request = predict_pb2.PredictRequest()
request.model_spec.name = "mistral"
request.model_spec.signature_name = "generate_text"
request.inputs["prompts"].CopyFrom(tf.make_tensor_proto(["Hello world"]))
for name, value, dtype in [("max_new_tokens", 8, tf.int32), ("temperature", 0.0, tf.float32), ("top_p", 1.0, tf.float32),
                           ("top_k", 0, tf.int32), ("seed", 0, tf.int32)]:
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
response = stub.Predict(request, timeout=60.0)
print(response)
print(tf.make_ndarray(response.outputs["completions"])[0].decode())
'''  # noqa: E501


def main():
    with tempfile.TemporaryDirectory() as workdir:
        common = dict(tokenizer=str(FIXTURES / "tiny_tokenizer"), dtype="float32", progress=False)
        paths = {
            "mistral": saved_model.export_saved_model(FIXTURES / "tiny_window", f"{workdir}/mistral", max_length=128,
                                                      max_new_tokens=8, **common)["path"],
            "classifier": saved_model.export_saved_model(FIXTURES / "tiny_seqcls", f"{workdir}/classifier",
                                                         max_length=128, **common)["path"],
        }
        loaded = {name: tf.saved_model.load(path) for name, path in paths.items()}
        blocks = ["### REST", "",
                  "Replies below come from the tiny test fixture (random weights: the text is gibberish), "
                  "exported with `--max-length 128 --max-new-tokens 8`, through `tf_mistral.export.serving_rest`, "
                  "which answers as TF Serving does.", ""]
        for title, model, body in REST:
            blocks.append(_rest_block(title, model, body, serving_rest.predict(loaded[model], body)))
        signature = loaded["mistral"].signatures["generate_text"]
        outputs = signature(prompts=tf.constant(["Hello world"]), max_new_tokens=tf.constant(8),
                            temperature=tf.constant(0.0), top_p=tf.constant(1.0), top_k=tf.constant(0),
                            seed=tf.constant(0))
        blocks += ["### gRPC (port 8500)", "", "```python", GRPC_CLIENT.strip(), "```", "", "prints:", "", "```",
                   _grpc_reply("mistral", "generate_text", outputs),
                   outputs["completions"].numpy()[0].decode(), "```", ""]
    doc = DOC.read_text()
    head, rest = doc.split(START, 1)
    DOC.write_text(f"{head}{START}\n" + "\n".join(blocks) + f"{END}{rest.split(END, 1)[1]}")
    print(f"wrote the examples into {DOC}")


if __name__ == "__main__":
    main()
