r"""Classify the queries of one few-shot task with a LEO model on TF Serving (gRPC).

    python export/grpc_client.py --server=localhost:8500 --model_name=leo \
        --input=/tmp/task.npz [--signature_name=serving_default]

The .npz holds two arrays (raw embeddings; the model normalises them):
  support  float32 [N, K, D]  K examples of class n in row n
  query    float32 [Q, D]     the examples to classify
e.g. np.savez("/tmp/task.npz", support=support, query=query), outside the
repository (export/README.md writes one from the embeddings).

Prints the predicted class of every query and, with --print_all, every output
of the signature. Needs grpcio and tensorflow-serving-api (not leo_tf).
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

SIGNATURES = ("serving_default", "generate")


def load_task(path: str) -> tuple[np.ndarray, np.ndarray]:
  """support float32 [N, K, D] and query float32 [Q, D] from an .npz file."""
  with np.load(path, allow_pickle=False) as data:
    missing = {"support", "query"} - set(data.files)
    if missing:
      raise ValueError(f"{path} lacks the arrays {sorted(missing)}; save it with "
                       "np.savez(path, support=[N, K, D] array, query=[Q, D] array).")
    support = np.asarray(data["support"], np.float32)  # [N, K, D]
    query = np.asarray(data["query"], np.float32)  # [Q, D]
  if support.ndim != 3 or query.ndim != 2:
    raise ValueError(f"{path}: support must be [N, K, D] and query [Q, D]; got shapes "
                     f"{support.shape} and {query.shape}.")
  return support, query


def make_request(support: np.ndarray, query: np.ndarray, model_name: str = "leo",
                 signature_name: str = "serving_default",
                 version: int | None = None) -> predict_pb2.PredictRequest:
  """A PredictRequest for one task: support [N, K, D], query [Q, D] as TensorProtos."""
  spec = model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
  if version is not None:
    spec.version.value = version
  request = predict_pb2.PredictRequest(model_spec=spec)
  request.inputs["support"].CopyFrom(tf.make_tensor_proto(np.asarray(support, np.float32)))
  request.inputs["query"].CopyFrom(tf.make_tensor_proto(np.asarray(query, np.float32)))
  return request


def parse_response(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
  """The outputs of a PredictResponse as numpy arrays, by output name."""
  return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def predict(server: str, request: predict_pb2.PredictRequest, timeout_s: float = 10.0
            ) -> dict[str, np.ndarray]:
  """Sends `request` to the PredictionService at `server` (host:port); returns the outputs."""
  with grpc.insecure_channel(server) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return parse_response(stub.Predict(request, timeout=timeout_s))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]} (flags look like --name=value).")
  f = flags.FLAGS
  try:
    support, query = load_task(f.input)
  except (OSError, ValueError) as e:
    sys.exit(f"grpc_client: error: {e}")
  request = make_request(support, query, f.model_name, f.signature_name,
                         f.model_version if f.model_version > 0 else None)
  try:
    outputs = predict(f.server, request, f.timeout_s)
  except grpc.RpcError as e:
    # INVALID_ARGUMENT carries the model's message (wrong D, N < 2, NaN, ...).
    sys.exit(f"grpc_client: {e.code().name}: {e.details()}")
  print(json.dumps({"classes": outputs["classes"].tolist()}))
  if f.print_all:
    for name, value in sorted(outputs.items()):
      print(f"{name} {list(value.shape)} {value.dtype}:\n{np.array2string(value, precision=4)}")


if __name__ == "__main__":
  flags.DEFINE_string("server", "localhost:8500", "TF Serving's gRPC address, host:port.")
  flags.DEFINE_string("model_name", "leo", "The model's name on the server (MODEL_NAME).")
  flags.DEFINE_enum("signature_name", "serving_default", SIGNATURES,
                    "serving_default: LEO with adaptation; generate: the generator alone.")
  flags.DEFINE_integer("model_version", 0, "A version to ask for (0: the server's latest).")
  flags.DEFINE_string("input", None, "An .npz with support [N, K, D] and query [Q, D].")
  flags.DEFINE_float("timeout_s", 10.0, "RPC deadline in seconds.")
  flags.DEFINE_bool("print_all", False, "Print every output, not only the classes.")
  flags.mark_flag_as_required("input")
  app.run(main)
