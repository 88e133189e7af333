r"""Answer a TF Serving REST predict body with a SavedModel loaded in Python (no server).

    python export/rest_answer.py --model_dir=models/omniglot/1 --body=/tmp/image_request.json

reads the body as TF Serving's REST API does (`"signature_name"`; columnar `"inputs"` or row
`"instances"`; `{"b64": "..."}` for bytes; lists as tensors of the signature's dtypes), runs the
signature and prints the JSON TF Serving would answer: `{"outputs": {...}}` for columnar
bodies, `{"predictions": [...]}` for rows, or, for a bad request, `{"error": "<message>"}`
(TF Serving's HTTP 400) with exit status 1. With `--folder`, the task folder the body was made
from, it also names each query's class on stderr.

It stands in for `curl .../v1/models/<name>:predict` where TF Serving cannot run; it is not TF
Serving (no batching, no HTTP).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any

from absl import app
from absl import flags
import numpy as np


def _decode(value: Any) -> Any:
  """JSON values -> Python values: {"b64": s} -> bytes, lists elementwise."""
  if isinstance(value, dict) and set(value) == {"b64"}:
    return base64.b64decode(value["b64"])
  if isinstance(value, list):
    return [_decode(v) for v in value]
  return value


def parse_body(body: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
  """(signature name, {input: nested lists}, row format?) of a REST predict body."""
  signature = body.get("signature_name", "serving_default")
  if "inputs" in body:
    return signature, {name: _decode(v) for name, v in body["inputs"].items()}, False
  if "instances" in body:
    instances = body["instances"]
    names = sorted(instances[0])
    return signature, {name: [_decode(i[name]) for i in instances] for name in names}, True
  raise ValueError('The body needs "inputs" (columnar) or "instances" (row format).')


def answer(loaded, body: dict[str, Any]) -> dict[str, Any]:
  """What TF Serving's REST API answers to `body` (raises tf.errors.InvalidArgumentError)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  signature, inputs, rows = parse_body(body)
  function = loaded.signatures[signature]
  specs = function.structured_input_signature[1]
  feeds = {}
  for name, value in inputs.items():
    dtype = specs[name].dtype
    array = np.array(value, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
    feeds[name] = tf.constant(array, dtype=dtype)
  outputs = {name: value.numpy() for name, value in function(**feeds).items()}
  if rows:  # one prediction per instance (axis 0)
    return {"predictions": [{name: value[i].tolist() for name, value in outputs.items()}
                            for i in range(len(next(iter(outputs.values()))))]}
  return {"outputs": {name: value.tolist() for name, value in outputs.items()}}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]} (flags look like --name=value).")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  with open(f.body) as body_file:
    body = json.load(body_file)
  loaded = tf.saved_model.load(f.model_dir)
  try:
    response = answer(loaded, body)
  except tf.errors.InvalidArgumentError as e:
    print(json.dumps({"error": e.message}))
    sys.exit(1)
  print(json.dumps(response, separators=(",", ":")))
  if f.folder and "outputs" in response:
    print(describe(f.folder, response["outputs"]), file=sys.stderr)


def describe(folder: str, outputs: dict[str, Any]) -> str:
  """Lines naming each query's class, for a body of make_image_request.py --folder=folder.

  Classes and queries are listed as make_image_request.py numbers them (names in order);
  where a query's file name starts with its true class's name (as in the Omniglot example),
  the last line counts the queries classified as such.
  """
  support, query = os.path.join(folder, "support"), os.path.join(folder, "query")
  classes = sorted(os.path.splitext(name)[0] if not os.path.isdir(os.path.join(support, name))
                   else name for name in os.listdir(support))
  queries = sorted(q for q in os.listdir(query) if q.lower().endswith((".png", ".jpg", ".jpeg")))
  lines, correct, named = [], 0, 0
  for name, c, p in zip(queries, outputs["classes"], outputs["probabilities"]):
    lines.append(f"{name}: {classes[c]} (probability {p[c]:.3f})")
    truth = [k for k in classes if name.startswith(k + "_")]
    named += bool(truth)
    correct += bool(truth) and max(truth, key=len) == classes[c]
  if named:
    lines.append(f"{correct} of {named} queries classified as the class their file name starts "
                 "with")
  return "\n".join(lines)


if __name__ == "__main__":
  flags.DEFINE_string("model_dir", None, "A version folder of an export (<export_dir>/<N>).")
  flags.DEFINE_string("body", None, "The JSON body of the request.")
  flags.DEFINE_string("folder", "", "The task folder the body was made from (make_image_request.py "
                      "--folder): each query's class is then named on stderr.")
  flags.mark_flags_as_required(["model_dir", "body"])
  app.run(main)
