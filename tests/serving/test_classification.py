"""serving.classification: the exported classifier's signatures. The served numbers against
the in-memory model (in a process without leo_tf, with TF2's loader and a TF1 session as TF
Serving uses), the signatures as saved_model_cli lists them, no XLA and one variable handle
per variable, no queries, bad requests with clear messages in the order of the checks (wrong
rank, wrong D, empty, one class, NaN or Inf, all-zero embeddings), small embeddings still
served, warmup records, PredictRequests, the gRPC client against a stand-in server, the REST
request file and make_request's line.
"""

import json
import os
import re
import subprocess
import sys
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from leo_tf.classification.leo import LEO
from leo_tf.serving import classification
from leo_tf.serving import publish
from tests.paths import REPO
from tests.serving.helpers import D, NZ, SUBPROCESS_ENV, call, load_script, reference, task

# (N, K, V): Q = N V queries, V per class in the in-memory reference.
TASKS = ((5, 1, 3), (3, 5, 4), (2, 2, 7))

# Loads the export twice, in a process that never imports leo_tf: with TF2's
# tf.saved_model.load, and as TF Serving does (a TF1 session: restore the
# variables, run the signature's tensors by name), which also replays the
# warmup records.
_FRESH_PROCESS = """
import os
import sys
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
version_dir, inputs_path, outputs_path = sys.argv[1:]
results = {}
with np.load(inputs_path) as data:
  tasks = [(data[f"support{i}"], data[f"query{i}"]) for i in range(int(data["num_tasks"]))]
warmup = [prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
          for record in tf.data.TFRecordDataset(
              os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests"))]

loaded = tf.saved_model.load(version_dir)
for i, (support, query) in enumerate(tasks):
  for signature in ("serving_default", "generate"):
    outputs = loaded.signatures[signature](support=tf.constant(support), query=tf.constant(query))
    for name, value in outputs.items():
      results[f"tf2/{signature}/{i}/{name}"] = value.numpy()

with tf.Graph().as_default(), tf.compat.v1.Session() as session:
  meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], version_dir)

  def run(signature, inputs):
    signature_def = meta_graph.signature_def[signature]
    feeds = {signature_def.inputs[name].name: value for name, value in inputs.items()}
    names = sorted(signature_def.outputs)
    values = session.run([signature_def.outputs[name].name for name in names], feeds)
    return dict(zip(names, values))

  for i, (support, query) in enumerate(tasks):
    for signature in ("serving_default", "generate"):
      for name, value in run(signature, {"support": support, "query": query}).items():
        results[f"session/{signature}/{i}/{name}"] = value
  for j, request in enumerate(warmup):
    inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    results[f"warmup/{j}"] = run(request.model_spec.signature_name, inputs)["probabilities"]

results["leo_tf_modules"] = np.array(
    sorted(m for m in sys.modules if m == "leo_tf" or m.startswith("leo_tf.")), dtype=str)
np.savez(outputs_path, **results)
"""


def test_round_trip_in_a_process_without_leo_tf(exported, tmp_path):
  tasks = [task(n, k, n * v, seed=i) for i, (n, k, v) in enumerate(TASKS)]
  inputs = {"num_tasks": len(tasks)}
  for i, (support, query) in enumerate(tasks):
    inputs[f"support{i}"], inputs[f"query{i}"] = support, query
  np.savez(tmp_path / "inputs.npz", **inputs)
  result = subprocess.run(
      [sys.executable, "-c", _FRESH_PROCESS, exported.version_dir,
       str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")],
      capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120, check=False,
      cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  served = dict(np.load(tmp_path / "outputs.npz"))
  assert served["leo_tf_modules"].size == 0, served["leo_tf_modules"]

  generator = LEO(exported.config.model.with_ablation("conditional_generator_only"))
  tf.train.Checkpoint(model=generator).restore(exported.prefix).expect_partial()
  for i, ((support, query), (n, k, v)) in enumerate(zip(tasks, TASKS)):
    for signature, model in (("serving_default", exported.model), ("generate", generator)):
      want = reference(model, support, query, v)
      for loader in ("tf2", "session"):
        got = {name: served[f"{loader}/{signature}/{i}/{name}"] for name in
               ("probabilities", "classes", "classifier_weights", "adapted_latents")}
        assert got["probabilities"].shape == (n * v, n)
        assert got["probabilities"].dtype == np.float32
        assert got["classes"].dtype == np.int64
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
        np.testing.assert_array_equal(got["classes"], want["classes"])
        np.testing.assert_allclose(got["classifier_weights"], want["classifier_weights"],
                                   atol=1e-5)
        # The K copies of a class's code are equal in evaluation; copy 0 is served.
        latents = want["latents"]  # [N, K, n_z]
        np.testing.assert_allclose(latents, np.broadcast_to(latents[:, :1], latents.shape),
                                   atol=1e-6)
        np.testing.assert_allclose(got["adapted_latents"], latents[:, 0], atol=1e-5)
    # Adaptation changes the answer, so the two signatures are told apart above.
    difference = np.abs(served[f"tf2/serving_default/{i}/probabilities"]
                        - served[f"tf2/generate/{i}/probabilities"]).max()
    assert difference > 1e-3
  for j in range(4):  # the warmup requests, replayed in the session
    probabilities = served[f"warmup/{j}"]
    assert probabilities.shape == (75, 5)
    np.testing.assert_allclose(probabilities.sum(axis=-1), np.ones(75), atol=1e-5)


def test_export_records_the_classifier(exported):
  record = publish.read_export_config(exported.version_dir)
  assert record["format"] == classification.FORMAT
  assert record["run_config"]["problem"] == "classification"
  assert sorted(record["signatures"]) == sorted(
      [classification.SERVING_SIGNATURE, classification.GENERATE_SIGNATURE,
       classification.EMBEDDINGS_BATCHED, classification.IMAGES, classification.IMAGES_BATCHED,
       classification.IMAGE_BYTES, classification.IMAGE_BYTES_BATCHED, "inputs", "outputs",
       "embedding_dim", "num_latents", "full_outputs"])
  assert (record["signatures"]["embedding_dim"], record["signatures"]["num_latents"]) == (D, NZ)
  assert record["front_end"]["convention"] == "omniglot"
  assert record["front_end"]["embed_chunk"] == 32
  assert record["front_end"]["backbone"]["conv4_channels"] == [8, 8, 16, D]


def _saved_model_cli(version_dir):
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  command = [cli] if os.path.exists(cli) else [
      sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
  result = subprocess.run(command + ["show", "--dir", version_dir, "--all"], capture_output=True,
                          text=True, env=SUBPROCESS_ENV, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_saved_model_cli_lists_dynamic_signatures(exported):
  text = _saved_model_cli(exported.version_dir)
  signatures = {}
  for name, body, method in re.findall(r"signature_def\['(\w+)'\]:(.*?)Method name is: (\S*)",
                                       text, flags=re.DOTALL):
    tensors = re.findall(r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+"
                         r"shape: (\([^)]*\)|unknown_rank)", body)
    signatures[name] = (method, {(kind, key): (dtype, shape)
                                 for kind, key, dtype, shape in tensors})
  expected = {
      # Any rank, so that a request of the wrong rank reaches the model's own check.
      ("inputs", "support"): ("DT_FLOAT", "unknown_rank"),
      ("inputs", "query"): ("DT_FLOAT", "unknown_rank"),
      ("outputs", "probabilities"): ("DT_FLOAT", "(-1, -1)"),
      ("outputs", "classes"): ("DT_INT64", "(-1)"),
      ("outputs", "classifier_weights"): ("DT_FLOAT", f"(-1, {D})"),
      ("outputs", "adapted_latents"): ("DT_FLOAT", f"(-1, {NZ})"),
  }
  for name in ("serving_default", "generate"):
    assert signatures[name] == ("tensorflow/serving/predict", expected), name


def test_graph_has_no_xla_one_handle_per_variable_and_is_deterministic(exported):
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(exported.version_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  graph = saved_model.meta_graphs[0].graph_def
  must_compile = [function.attr["_XlaMustCompile"].b for function in graph.library.function
                  if "_XlaMustCompile" in function.attr]
  assert must_compile and not any(must_compile)  # the attribute is there, and False
  # One variable per model variable: Keras would add restored copies that the
  # functions do not read (see serving.savedmodel.served_variables).
  handles = sorted(node.attr["shared_name"].s.decode() for node in graph.node
                   if node.op == "VarHandleOp")
  assert len(handles) == (len(exported.model.meta_variables)
                          + len(exported.front_end.backbone.variables)), handles
  ops = {node.op for node in graph.node}
  ops.update(node.op for function in graph.library.function for node in function.node_def)
  assert not {op for op in ops if "Xla" in op}, ops
  support, query = task(4, 3, 9, seed=10)
  first = call(exported.loaded, "serving_default", support, query)
  second = call(exported.loaded, "serving_default", support, query)
  for name in first:
    np.testing.assert_array_equal(first[name], second[name])


def test_no_queries_still_gives_the_adapted_classifier(exported):
  support, query = task(3, 2, 6, seed=11)
  with_queries = call(exported.loaded, "serving_default", support, query)
  without = call(exported.loaded, "serving_default", support, np.zeros((0, D), np.float32))
  assert without["probabilities"].shape == (0, 3)
  assert without["classes"].shape == (0,)
  np.testing.assert_allclose(without["classifier_weights"], with_queries["classifier_weights"],
                             atol=1e-6)


_GOOD_SUPPORT, _GOOD_QUERY = task(3, 2, 4, seed=12)
_NAN_SUPPORT = _GOOD_SUPPORT.copy()
_NAN_SUPPORT[1, 0, 5] = np.nan
_INF_QUERY = _GOOD_QUERY.copy()
_INF_QUERY[2, 7] = np.inf
_ZERO_SUPPORT = _GOOD_SUPPORT.copy()
_ZERO_SUPPORT[1, 1] = 0.0  # class 1, example 1
_ZERO_QUERY = _GOOD_QUERY.copy()
_ZERO_QUERY[2] = 0.0
_ZERO_QUERY[3] = 0.0
_NAN_AND_ZERO_SUPPORT = _ZERO_SUPPORT.copy()
_NAN_AND_ZERO_SUPPORT[2, 0, 3] = np.nan
_RANK_SUPPORT = (
    f"support must be rank 3, [N, K, D] with D = {D}: N classes, K examples of each; for one "
    "example per class send [N, 1, D].")
_RANK_QUERY = (f"query must be rank 2, [Q, D] with D = {D}: one row per example to classify; "
               "for a single query send [1, D].")
_ZERO = ("{} has an all-zero embedding (L2 norm below 1e-6), which cannot be L2-normalised; "
         "send embeddings with non-zero values.")


def _exactly(*parts):
  """The whole line of a failed tf.debugging.Assert with these data, as a regex."""
  return re.escape("assertion failed: " + " ".join(f"[{part}]" for part in parts)) + r"\n"


@pytest.mark.parametrize("support, query, message", [
    (np.zeros((3, 2, D + 1), np.float32), _GOOD_QUERY,
     rf"support must be \[N, K, D\] with D = {D}.*support shape:\] \[3 2 {D + 1}\]"),
    (_GOOD_SUPPORT, np.zeros((4, D - 1), np.float32),
     rf"query must be \[Q, D\] with D = {D}.*query shape:\] \[4 {D - 1}\]"),
    (np.zeros((0, 2, D), np.float32), _GOOD_QUERY, r"support is empty \(N = 0 classes"),
    (np.zeros((3, 0, D), np.float32), _GOOD_QUERY, r"support is empty .*K = 0 examples"),
    (_GOOD_SUPPORT[:1], _GOOD_QUERY, r"fewer than 2 classes; a task needs N >= 2"),
    (_NAN_SUPPORT, _GOOD_QUERY, r"support contains NaN or Inf"),
    (_GOOD_SUPPORT, _INF_QUERY, r"query contains NaN or Inf"),
    # Forgetting the K axis of a 1-shot task: [N, D] instead of [N, 1, D].
    (_GOOD_SUPPORT[:, 0], _GOOD_QUERY,
     _exactly(_RANK_SUPPORT, "support shape:", f"3 {D}")),
    (np.zeros((3, 2, 1, D), np.float32), _GOOD_QUERY,
     _exactly(_RANK_SUPPORT, "support shape:", f"3 2 1 {D}")),
    (_GOOD_SUPPORT, _GOOD_QUERY[None], _exactly(_RANK_QUERY, "query shape:", f"1 4 {D}")),
    (_GOOD_SUPPORT, _GOOD_QUERY[0], _exactly(_RANK_QUERY, "query shape:", f"{D}")),
    # The first problem is the one reported: support's rank before query's rank and D.
    (_GOOD_SUPPORT[:, 0, :5], _GOOD_QUERY[0], _exactly(_RANK_SUPPORT, "support shape:", "3 5")),
    # An all-zero embedding would be served uniform probabilities.
    (_ZERO_SUPPORT, _GOOD_QUERY,
     _exactly(_ZERO.format("support"), "[n, k] of the first:", "[1 1]")),
    (_GOOD_SUPPORT, _ZERO_QUERY, _exactly(_ZERO.format("query"), "[q] of the first:", "[2]")),
    # NaN before zero: a support with both reports the NaN.
    (_NAN_AND_ZERO_SUPPORT, _GOOD_QUERY,
     re.escape("support contains NaN or Inf; send finite embeddings : Tensor had NaN values")),
], ids=["support_d", "query_d", "no_classes", "no_examples", "one_class", "nan_support",
        "inf_query", "support_without_k", "support_rank_4", "query_rank_3", "query_rank_1",
        "support_rank_first", "zero_support", "zero_query", "nan_before_zero"])
@pytest.mark.parametrize("signature", ["serving_default", "generate"])
def test_bad_requests_fail_with_clear_messages(exported, signature, support, query, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    call(exported.loaded, signature, support, query)


def test_small_embeddings_are_served_as_their_direction(exported):
  # Only norms below 1e-6 are refused: a support row and a query scaled down to
  # norm about 1e-4 are L2-normalised to the same unit vectors.
  support, query = task(3, 2, 4, seed=15)
  small_support, small_query = support.copy(), query.copy()
  small_support[1, 1] *= 1e-4 / np.linalg.norm(support[1, 1])
  small_query[2] *= 1e-4 / np.linalg.norm(query[2])
  for signature in ("serving_default", "generate"):
    want = call(exported.loaded, signature, support, query)
    got = call(exported.loaded, signature, small_support, small_query)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)


def test_warmup_records_parse_and_replay(exported):
  path = os.path.join(exported.version_dir, "assets.extra", "tf_serving_warmup_requests")
  logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
          for record in tf.data.TFRecordDataset(path)]
  described = [(log.predict_log.request.model_spec.signature_name,
                tuple(tf.make_ndarray(log.predict_log.request.inputs["support"]).shape),
                tuple(tf.make_ndarray(log.predict_log.request.inputs["query"]).shape))
               for log in logs[:4]]
  assert described == [(signature, (5, k, D), (75, D))
                       for signature in ("serving_default", "generate") for k in (1, 5)]
  assert [log.predict_log.request.model_spec.signature_name for log in logs[4:]] == [
      "embeddings_batched", "images", "images_batched", "image_bytes", "image_bytes_batched"]
  for log in logs:
    request = log.predict_log.request
    signature = request.model_spec.signature_name
    inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    outputs = {name: value.numpy() for name, value in
               exported.loaded.signatures[signature](**inputs).items()}
    q = 75 if signature in ("serving_default", "generate") else 5
    shape = (2, q, 5) if signature.endswith("_batched") else (q, 5)
    assert outputs["probabilities"].shape == shape, signature
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=-1), np.ones(shape[:-1]),
                               atol=1e-5)


def test_predict_request_gives_the_direct_answer(exported):
  grpc_client = load_script("grpc_client")
  support, query = task(5, 2, 11, seed=13)
  direct = call(exported.loaded, "serving_default", support, query)
  request = grpc_client.make_request(support, query, "leo", "serving_default")
  received = predict_pb2.PredictRequest.FromString(request.SerializeToString())  # the wire
  assert received.model_spec.name == "leo"
  inputs = {name: tf.make_ndarray(proto) for name, proto in received.inputs.items()}
  assert sorted(inputs) == ["query", "support"]
  via_request = call(exported.loaded, received.model_spec.signature_name, **inputs)
  for name in direct:
    np.testing.assert_array_equal(via_request[name], direct[name])


class _StandInServer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Answers Predict with the loaded SavedModel (not TF Serving: that needs docker)."""

  def __init__(self, loaded):
    self.loaded = loaded

  def Predict(self, request, context):  # pylint: disable=invalid-name
    inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    try:
      outputs = call(self.loaded, request.model_spec.signature_name or "serving_default",
                     **inputs)
    except tf.errors.InvalidArgumentError as e:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
    response = predict_pb2.PredictResponse(model_spec=request.model_spec)
    for name, value in outputs.items():
      response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return response


def test_grpc_client_against_a_stand_in_server(exported):
  grpc_client = load_script("grpc_client")
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      _StandInServer(exported.loaded), server)
  port = server.add_insecure_port("localhost:0")
  server.start()
  try:
    support, query = task(2, 3, 5, seed=14)
    for signature in ("serving_default", "generate"):
      outputs = grpc_client.predict(
          f"localhost:{port}", grpc_client.make_request(support, query, "leo", signature))
      direct = call(exported.loaded, signature, support, query)
      assert sorted(outputs) == sorted(direct)
      for name in direct:
        np.testing.assert_array_equal(outputs[name], direct[name])
    with pytest.raises(grpc.RpcError) as error:
      grpc_client.predict(f"localhost:{port}", grpc_client.make_request(support[:1], query))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a task needs N >= 2 classes" in error.value.details()
  finally:
    server.stop(grace=None)


def test_rest_request_file_is_reproducible_and_served(exported):
  make_request = load_script("make_request")
  with open(os.path.join(REPO, "export", "request.json")) as f:
    text = f.read()
  body = json.loads(text)
  assert body["signature_name"] == "serving_default"
  assert np.asarray(body["inputs"]["support"]).shape == (2, 1, 640)
  assert np.asarray(body["inputs"]["query"]).shape == (2, 640)
  # request.json is what its documented command writes.
  random_task = make_request.random_task(640, num_classes=2, num_shots=1, num_queries=2, seed=0)
  assert make_request.dumps(make_request.rest_request(*random_task, decimals=3)) == text
  # A body for this model, parsed as TF Serving parses the columnar format.
  support, query = make_request.random_task(D, num_classes=3, num_shots=2, num_queries=4, seed=1)
  body = json.loads(make_request.dumps(make_request.rest_request(support, query, "generate")))
  inputs = {name: np.asarray(value, np.float32) for name, value in body["inputs"].items()}
  np.testing.assert_array_equal(inputs["support"], support)  # float32 values survive JSON
  served = call(exported.loaded, body["signature_name"], **inputs)
  direct = call(exported.loaded, "generate", support, query)
  np.testing.assert_array_equal(served["probabilities"], direct["probabilities"])


def test_make_request_says_what_it_wrote(tmp_path):
  support, query = task(3, 2, 4, seed=16)
  np.savez(tmp_path / "task.npz", support=support, query=query)
  script = os.path.join(REPO, "export", "make_request.py")
  written = subprocess.run(
      [sys.executable, script, f"--input={tmp_path / 'task.npz'}", "--signature_name=generate",
       f"--output={tmp_path / 'body.json'}"],
      capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=60, check=False,
      cwd=str(tmp_path))
  assert written.returncode == 0, written.stderr[-3000:]
  assert written.stdout == (
      f"make_request: wrote {tmp_path / 'body.json'}: generate request, support [N, K, D] = "
      f"[3, 2, {D}], query [Q, D] = [4, {D}]\n")
  with open(tmp_path / "body.json") as f:
    body = json.load(f)
  np.testing.assert_array_equal(np.asarray(body["inputs"]["support"], np.float32), support)
  # Without --output the body alone goes to stdout, the line to stderr.
  printed = subprocess.run(
      [sys.executable, script, "--embedding_dim=8", "--num_classes=2", "--num_shots=1",
       "--num_queries=3"],
      capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=60, check=False,
      cwd=str(tmp_path))
  assert printed.returncode == 0, printed.stderr[-3000:]
  assert np.asarray(json.loads(printed.stdout)["inputs"]["query"]).shape == (3, 8)
  assert printed.stderr == ("make_request: wrote stdout: serving_default request, support "
                            "[N, K, D] = [2, 1, 8], query [Q, D] = [3, 8]\n")


def _must_compile(version_dir):
  """{function name: its _XlaMustCompile} of the export's function library."""
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  return {function.signature.name: function.attr["_XlaMustCompile"].b
          for function in saved_model.meta_graphs[0].graph_def.library.function
          if "_XlaMustCompile" in function.attr}


def test_jit_compile_compiles_leo_alone_and_answers_as_the_plain_export(exported, xla_exported):
  # export(jit_compile=True): the two task functions (adapt and generate) are compiled with
  # XLA, the signatures around them (checks, backbone, task loop) are not; every signature
  # answers as the plain export within float32 rounding (XLA fuses and reorders sums).
  version_dir, loaded = xla_exported
  compiled = sorted(name for name, flag in _must_compile(version_dir).items() if flag)
  assert len(compiled) == 2 and all("one_task" in name for name in compiled), compiled
  assert not any(_must_compile(exported.version_dir).values())
  with open(os.path.join(version_dir, "assets.extra", "leo_config.json")) as f:
    assert json.load(f)["jit_compile"] is True
  for n, k, q, seed in ((5, 1, 25, 40), (3, 2, 7, 41), (4, 3, 0, 42)):
    support, query = task(n, k, q, seed=seed)
    for signature in ("serving_default", "generate"):
      plain = call(exported.loaded, signature, support, query)
      xla = call(loaded, signature, support, query)
      assert sorted(xla) == sorted(plain)
      for name in ("probabilities", "classifier_weights", "adapted_latents"):
        np.testing.assert_allclose(xla[name], plain[name], rtol=0, atol=2e-5,
                                   err_msg=f"{signature} {name}")
      np.testing.assert_array_equal(xla["classes"], plain["classes"])
  pixels = np.random.default_rng(43).integers(0, 256, (2, 5, 1, 28, 28, 1), dtype=np.uint8)
  queries = np.random.default_rng(44).integers(0, 256, (2, 10, 28, 28, 1), dtype=np.uint8)
  for signature, inputs in (
      ("images", {"support_images": pixels[0], "query_images": queries[0]}),
      ("images_batched", {"support_images": pixels, "query_images": queries})):
    plain = {n: v.numpy() for n, v in exported.loaded.signatures[signature](**inputs).items()}
    xla = {n: v.numpy() for n, v in loaded.signatures[signature](**inputs).items()}
    np.testing.assert_allclose(xla["probabilities"], plain["probabilities"], atol=2e-5)
    np.testing.assert_array_equal(xla["classes"], plain["classes"])
  # The single-task signature, without the task loop, is task 0 of the batched one bit for bit.
  alone = {n: v.numpy() for n, v in loaded.signatures["images"](
      support_images=pixels[1], query_images=queries[1]).items()}
  np.testing.assert_array_equal(alone["probabilities"], xla["probabilities"][1])


def test_jit_compile_batches_exactly_and_keeps_the_checks(xla_exported):
  # With XLA, B tasks concatenated as TF Serving's batcher does answer exactly as each alone
  # (one compiled function per task shape), and bad requests fail before XLA runs.
  _, loaded = xla_exported
  tasks = [task(3, 2, 4, seed=50 + i) for i in range(5)]
  one = {"support": np.stack([s for s, _ in tasks[:2]]), "query": np.stack([q for _, q in tasks[:2]])}
  two = {"support": np.stack([s for s, _ in tasks[2:]]), "query": np.stack([q for _, q in tasks[2:]])}
  together = call(loaded, "embeddings_batched", **{n: np.concatenate([one[n], two[n]]) for n in one})
  alone = [call(loaded, "embeddings_batched", **r) for r in (one, two)]
  for name in together:
    np.testing.assert_array_equal(together[name], np.concatenate([a[name] for a in alone]))
  direct = call(loaded, "serving_default", *tasks[3])
  np.testing.assert_array_equal(together["probabilities"][3], direct["probabilities"])
  for support, query, message in ((_NAN_SUPPORT, _GOOD_QUERY, r"support contains NaN or Inf"),
                                  (_GOOD_SUPPORT[:1], _GOOD_QUERY, r"fewer than 2 classes"),
                                  (_ZERO_SUPPORT, _GOOD_QUERY, r"support has an all-zero")):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      call(loaded, "serving_default", support, query)
