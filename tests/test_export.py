"""Export for TF Serving: the served numbers against the in-memory model (in a
process without leo_tf), the signatures as saved_model_cli lists them, no XLA,
warmup records, PredictRequests, bad requests, and version folders that appear
whole and are never overwritten.

One export (through the command line) is shared by the module; the model is a
small LEO (D = 32, n_z = 8) whose variables are moved off their initial values
so that adaptation changes the answer. One more test exports a run that
trainer.train wrote (4 steps on a tiny synthetic set).
"""

import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from leo_tf.data import embeddings
from leo_tf.serving import export
from leo_tf.data import synthetic
from leo_tf.classification import experiment as trainer
from leo_tf.core.config import DataConfig, ModelConfig, OuterConfig
from leo_tf.classification.leo import LEO, ProblemInstance

D, NZ = 32, 8
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (N, K, V): Q = N V queries, V per class in the in-memory reference.
TASKS = ((5, 1, 3), (3, 5, 4), (2, 2, 7))
SUBPROCESS_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def _load_script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "export", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run_config(checkpoint_path):
  return trainer.RunConfig(
      model=ModelConfig(embedding_dim=D, num_latents=NZ, inner_unroll_length=2,
                        finetuning_unroll_length=2, dropout_rate=0.3),
      outer=OuterConfig(checkpoint_path=str(checkpoint_path), seed=2), progress=False)


def _trained_run(config, seed):
  """A trainer.Run whose variables are moved off their initial values."""
  run = trainer.Run(config)
  rng = np.random.default_rng(seed)
  model = run.model
  for kernel in model.regularized_kernels:
    kernel.assign(kernel.numpy() * rng.uniform(0.5, 1.5, kernel.shape))
  model.inner_lr.assign(rng.uniform(0.5, 2.0, [NZ]))  # alpha
  model.finetuning_lr.assign(rng.uniform(0.05, 0.3, [D]))  # eta
  return run


@dataclasses.dataclass(frozen=True)
class Exported:
  config: trainer.RunConfig
  run_dir: str
  prefix: str
  base: str
  version_dir: str
  stdout: str
  model: LEO  # restored from the checkpoint, as trainer.evaluate does
  loaded: object  # tf.saved_model.load of the version


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  run_dir = str(tmp_path_factory.mktemp("run"))
  base = os.path.join(str(tmp_path_factory.mktemp("models")), "leo")
  config = _run_config(run_dir)
  trainer.write_json_atomically(os.path.join(run_dir, "config.json"), config.to_dict())
  run = _trained_run(config, seed=0)
  run.step.assign(7)
  prefix = run.save_best(0.625)
  result = subprocess.run(
      [sys.executable, "-m", "leo_tf.export", f"--checkpoint_path={run_dir}",
       f"--export_dir={base}"],
      capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  model = LEO(config.model)
  tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
  version_dir = os.path.join(base, "1")
  return Exported(config, run_dir, prefix, base, version_dir, result.stdout, model,
                  tf.saved_model.load(version_dir))


def _task(num_classes, num_examples, num_queries, seed):
  """Raw (unnormalised, shifted, rescaled) support [N, K, D] and query [Q, D]."""
  rng = np.random.default_rng(seed)

  def raw(shape):
    scale = rng.uniform(0.5, 5.0, shape[:-1] + (1,))
    return ((rng.standard_normal(shape) + 0.3) * scale).astype(np.float32)

  return raw((num_classes, num_examples, D)), raw((num_queries, D))


def _reference(model, support, query, num_val):
  """LEO.__call__ in evaluation on the normalised task, queries grouped V per class."""
  n, k, _ = support.shape
  normalized_support = embeddings.l2_normalize_rows(support.reshape(n * k, D)).reshape(n, k, D)
  normalized_query = embeddings.l2_normalize_rows(query)  # [Q, D]
  labels = np.arange(n, dtype=np.int32)[None, :, None]  # [1, N, 1]
  problem = ProblemInstance(
      normalized_support[None], np.broadcast_to(labels, (1, n, k)),
      normalized_query.reshape(1, n, num_val, D),  # [Q, D] -> [1, N, V, D], q = n V + v
      np.broadcast_to(labels, (1, n, num_val)))
  outputs = model(problem, training=False)
  logits = outputs.val_logits.numpy()[0].reshape(n * num_val, n)  # [N, V, N] -> [Q, N]
  return {
      "probabilities": tf.nn.softmax(logits, axis=-1).numpy(),
      "classes": np.argmax(logits, axis=-1),
      "classifier_weights": outputs.classifier_weights.numpy()[0],  # [N, D]
      "latents": outputs.adapted_latents.numpy()[0],  # [N, K, n_z]
  }


def _call(loaded, signature, support, query):
  outputs = loaded.signatures[signature](support=tf.constant(support), query=tf.constant(query))
  return {name: value.numpy() for name, value in outputs.items()}


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
  tasks = [_task(n, k, n * v, seed=i) for i, (n, k, v) in enumerate(TASKS)]
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
      reference = _reference(model, support, query, v)
      for loader in ("tf2", "session"):
        got = {name: served[f"{loader}/{signature}/{i}/{name}"] for name in
               ("probabilities", "classes", "classifier_weights", "adapted_latents")}
        assert got["probabilities"].shape == (n * v, n)
        assert got["probabilities"].dtype == np.float32
        assert got["classes"].dtype == np.int64
        np.testing.assert_allclose(got["probabilities"], reference["probabilities"], atol=1e-5)
        np.testing.assert_array_equal(got["classes"], reference["classes"])
        np.testing.assert_allclose(got["classifier_weights"], reference["classifier_weights"],
                                   atol=1e-5)
        # The K copies of a class's code are equal in evaluation; copy 0 is served.
        latents = reference["latents"]  # [N, K, n_z]
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


def test_command_line_reports_and_records_the_source(exported):
  assert sorted(os.listdir(exported.base)) == ["1"]  # no temporary folder left
  assert exported.version_dir in exported.stdout
  assert "signatures: generate, serving_default;" in exported.stdout
  assert sorted(os.listdir(exported.version_dir)) == [
      "assets", "assets.extra", "fingerprint.pb", "saved_model.pb", "variables"]
  record = export.read_export_config(exported.version_dir)
  assert record["version"] == 1
  assert record["source"]["step"] == 7
  assert record["source"]["metavalid_accuracy"] == 0.625
  assert record["source"]["checkpoint"] == os.path.abspath(exported.prefix)
  assert record["source"]["sha256"] == export.checkpoint_sha256(exported.prefix)
  assert trainer.RunConfig.from_dict(record["run_config"]) == exported.config
  assert record["model"]["embedding_dim"] == D


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
                         r"shape: (\([^)]*\))", body)
    signatures[name] = (method, {(kind, key): (dtype, shape)
                                 for kind, key, dtype, shape in tensors})
  expected = {
      ("inputs", "support"): ("DT_FLOAT", "(-1, -1, -1)"),
      ("inputs", "query"): ("DT_FLOAT", "(-1, -1)"),
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
  # functions do not read (see export.ServingModule).
  handles = sorted(node.attr["shared_name"].s.decode() for node in graph.node
                   if node.op == "VarHandleOp")
  assert len(handles) == len(exported.model.meta_variables), handles
  ops = {node.op for node in graph.node}
  ops.update(node.op for function in graph.library.function for node in function.node_def)
  assert not {op for op in ops if "Xla" in op}, ops
  support, query = _task(4, 3, 9, seed=10)
  first = _call(exported.loaded, "serving_default", support, query)
  second = _call(exported.loaded, "serving_default", support, query)
  for name in first:
    np.testing.assert_array_equal(first[name], second[name])


def test_no_queries_still_gives_the_adapted_classifier(exported):
  support, query = _task(3, 2, 6, seed=11)
  with_queries = _call(exported.loaded, "serving_default", support, query)
  without = _call(exported.loaded, "serving_default", support, np.zeros((0, D), np.float32))
  assert without["probabilities"].shape == (0, 3)
  assert without["classes"].shape == (0,)
  np.testing.assert_allclose(without["classifier_weights"], with_queries["classifier_weights"],
                             atol=1e-6)


_GOOD_SUPPORT, _GOOD_QUERY = _task(3, 2, 4, seed=12)
_NAN_SUPPORT = _GOOD_SUPPORT.copy()
_NAN_SUPPORT[1, 0, 5] = np.nan
_INF_QUERY = _GOOD_QUERY.copy()
_INF_QUERY[2, 7] = np.inf


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
], ids=["support_d", "query_d", "no_classes", "no_examples", "one_class", "nan_support",
        "inf_query"])
@pytest.mark.parametrize("signature", ["serving_default", "generate"])
def test_bad_requests_fail_with_clear_messages(exported, signature, support, query, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    _call(exported.loaded, signature, support, query)


def test_warmup_records_parse_and_replay(exported):
  path = os.path.join(exported.version_dir, "assets.extra", "tf_serving_warmup_requests")
  logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
          for record in tf.data.TFRecordDataset(path)]
  described = [(log.predict_log.request.model_spec.signature_name,
                tuple(tf.make_ndarray(log.predict_log.request.inputs["support"]).shape),
                tuple(tf.make_ndarray(log.predict_log.request.inputs["query"]).shape))
               for log in logs]
  assert described == [(signature, (5, k, D), (75, D))
                       for signature in ("serving_default", "generate") for k in (1, 5)]
  for log in logs:
    request = log.predict_log.request
    inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    outputs = _call(exported.loaded, request.model_spec.signature_name, **inputs)
    assert outputs["probabilities"].shape == (75, 5)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=-1), np.ones(75), atol=1e-5)


def test_predict_request_gives_the_direct_answer(exported):
  grpc_client = _load_script("grpc_client")
  support, query = _task(5, 2, 11, seed=13)
  direct = _call(exported.loaded, "serving_default", support, query)
  request = grpc_client.make_request(support, query, "leo", "serving_default")
  received = predict_pb2.PredictRequest.FromString(request.SerializeToString())  # the wire
  assert received.model_spec.name == "leo"
  inputs = {name: tf.make_ndarray(proto) for name, proto in received.inputs.items()}
  assert sorted(inputs) == ["query", "support"]
  via_request = _call(exported.loaded, received.model_spec.signature_name, **inputs)
  for name in direct:
    np.testing.assert_array_equal(via_request[name], direct[name])


class _StandInServer(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Answers Predict with the loaded SavedModel (not TF Serving: that needs docker)."""

  def __init__(self, loaded):
    self.loaded = loaded

  def Predict(self, request, context):  # pylint: disable=invalid-name
    inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    try:
      outputs = _call(self.loaded, request.model_spec.signature_name or "serving_default",
                      **inputs)
    except tf.errors.InvalidArgumentError as e:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, e.message)
    response = predict_pb2.PredictResponse(model_spec=request.model_spec)
    for name, value in outputs.items():
      response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return response


def test_grpc_client_against_a_stand_in_server(exported):
  grpc_client = _load_script("grpc_client")
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      _StandInServer(exported.loaded), server)
  port = server.add_insecure_port("localhost:0")
  server.start()
  try:
    support, query = _task(2, 3, 5, seed=14)
    for signature in ("serving_default", "generate"):
      outputs = grpc_client.predict(
          f"localhost:{port}", grpc_client.make_request(support, query, "leo", signature))
      direct = _call(exported.loaded, signature, support, query)
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
  make_request = _load_script("make_request")
  with open(os.path.join(REPO, "export", "request.json")) as f:
    text = f.read()
  body = json.loads(text)
  assert body["signature_name"] == "serving_default"
  assert np.asarray(body["inputs"]["support"]).shape == (2, 1, 640)
  assert np.asarray(body["inputs"]["query"]).shape == (2, 640)
  # request.json is what its documented command writes.
  task = make_request.random_task(640, num_classes=2, num_shots=1, num_queries=2, seed=0)
  assert make_request.dumps(make_request.rest_request(*task, decimals=3)) == text
  # A body for this model, parsed as TF Serving parses the columnar format.
  support, query = make_request.random_task(D, num_classes=3, num_shots=2, num_queries=4, seed=1)
  body = json.loads(make_request.dumps(make_request.rest_request(support, query, "generate")))
  inputs = {name: np.asarray(value, np.float32) for name, value in body["inputs"].items()}
  np.testing.assert_array_equal(inputs["support"], support)  # float32 values survive JSON
  served = _call(exported.loaded, body["signature_name"], **inputs)
  direct = _call(exported.loaded, "generate", support, query)
  np.testing.assert_array_equal(served["probabilities"], direct["probabilities"])


def _tree_digest(folder):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      digest.update(os.path.relpath(os.path.join(root, name), folder).encode())
      with open(os.path.join(root, name), "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def test_interrupted_export_leaves_no_version(exported, tmp_path, monkeypatch):
  base = str(tmp_path / "leo")
  seen = {}

  def interrupt(path, embedding_dim):
    del embedding_dim
    version_tmp = os.path.dirname(os.path.dirname(path))  # <tmp>/assets.extra/<file>
    seen["name"] = os.path.basename(version_tmp)
    seen["files"] = sorted(os.listdir(version_tmp))
    raise RuntimeError("interrupted while writing the warmup requests")

  monkeypatch.setattr(export, "_write_warmup_requests", interrupt)
  with pytest.raises(RuntimeError, match="interrupted"):
    export.export_checkpoint(exported.run_dir, base)
  assert seen["name"] == f".tmp-1-{os.getpid()}"  # not a name TF Serving loads
  assert "saved_model.pb" in seen["files"] and "variables" in seen["files"]
  assert os.listdir(base) == []  # no version, and the temporary folder is gone
  assert export.versions(base) == []


def test_exporting_again_never_overwrites(exported, tmp_path):
  base = str(tmp_path / "leo")
  shutil.copytree(exported.version_dir, os.path.join(base, "1"))
  # What a killed export leaves: a hidden folder, which is no version.
  os.makedirs(os.path.join(base, ".tmp-2-999999", "variables"))
  with open(os.path.join(base, ".tmp-2-999999", "saved_model.pb"), "wb") as f:
    f.write(b"partial")
  before = _tree_digest(os.path.join(base, "1"))

  with pytest.raises(FileExistsError, match=r"Version 1 .* already holds checkpoint"):
    export.export_checkpoint(exported.run_dir, base)
  # A copy under another name is the same checkpoint (same contents).
  copy = os.path.join(exported.run_dir, "copy", "renamed")
  os.makedirs(os.path.dirname(copy))
  for path in [exported.prefix + ".index", *glob.glob(exported.prefix + ".data-*")]:
    shutil.copy(path, copy + path[len(exported.prefix):])
  with pytest.raises(FileExistsError, match=r"Version 1 .* already holds checkpoint"):
    export.export_checkpoint(exported.run_dir, base, checkpoint=copy)
  assert export.versions(base) == [1]

  # Another checkpoint of the run, named explicitly, becomes version 2.
  run = _trained_run(exported.config, seed=1)
  run.step.assign(9)
  other = run.checkpoint.write(os.path.join(exported.run_dir, "other", "ckpt-9"))
  version_dir = export.export_checkpoint(exported.run_dir, base, checkpoint=other)
  assert version_dir == os.path.join(base, "2")
  assert export.versions(base) == [1, 2]
  record = export.read_export_config(version_dir)
  assert record["source"]["step"] == 9
  assert record["source"]["sha256"] != export.read_export_config(
      os.path.join(base, "1"))["source"]["sha256"]
  assert _tree_digest(os.path.join(base, "1")) == before

  support, query = _task(3, 1, 4, seed=15)
  version_2 = tf.saved_model.load(version_dir)
  old, new = (_call(m, "serving_default", support, query) for m in (exported.loaded, version_2))
  assert np.abs(old["probabilities"] - new["probabilities"]).max() > 1e-3  # new weights


def _partial_checkpoint(config, path):
  """A checkpoint whose model lacks the relation network."""
  model = LEO(config.model)
  partial = tf.Module()
  partial.encoder, partial.decoder = model.encoder, model.decoder
  partial.inner_lr, partial.finetuning_lr = model.inner_lr, model.finetuning_lr
  return tf.train.Checkpoint(model=partial).write(path)


@pytest.mark.parametrize("case, message", [
    ("other_sizes", r"does not hold the model .*incompatible tensor with shape \(8, 64\)"),
    ("missing_variables", r"does not hold the model .*not in the checkpoint: .*relation_network/w"),
], ids=["other_sizes", "missing_variables"])
def test_checkpoint_of_another_model_is_refused(exported, tmp_path, case, message):
  run_dir = str(tmp_path / "run")
  config = _run_config(run_dir)
  if case == "other_sizes":
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_latents=4))
    checkpoint = exported.prefix
  else:
    checkpoint = _partial_checkpoint(config, str(tmp_path / "partial" / "ckpt-1"))
  trainer.write_json_atomically(os.path.join(run_dir, "config.json"), config.to_dict())
  with pytest.raises(ValueError, match=message):
    export.export_checkpoint(run_dir, str(tmp_path / "leo"), checkpoint=checkpoint)
  assert export.versions(str(tmp_path / "leo")) == []


def test_models_config_parses_for_the_exported_layout():
  with open(os.path.join(REPO, "export", "models.config")) as f:
    config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  assert (model.name, model.base_path, model.model_platform) == ("leo", "/models/leo",
                                                                 "tensorflow")
  assert model.model_version_policy.latest.num_versions == 1


def test_export_of_a_run_that_trainer_train_wrote(tmp_path):
  data_path = str(tmp_path / "embeddings")
  synthetic.generate(synthetic.SyntheticConfig(
      num_train_classes=8, num_val_classes=6, num_test_classes=6, images_per_class=30,
      embedding_dim=D, signal_dim=8, nuisance_dim=8), data_path, num_eval_tasks=10)
  run_dir = str(tmp_path / "run")
  config = trainer.RunConfig(
      model=ModelConfig(embedding_dim=D, num_latents=NZ, inner_unroll_length=2,
                        finetuning_unroll_length=2),
      data=DataConfig(data_path=data_path, dataset_name="synthetic",
                      num_val_examples_per_class=5),
      outer=OuterConfig(num_steps_limit=4, checkpoint_steps=2, num_metavalid_tasks=10,
                        num_metatest_tasks=10, metatrain_batch_size=2, checkpoint_path=run_dir,
                        jit_compile=False),
      progress=False)
  trainer.train(config)
  version_dir = export.export_checkpoint(run_dir, str(tmp_path / "leo"))
  prefix, record = trainer.best_checkpoint(run_dir)
  source = export.read_export_config(version_dir)["source"]
  assert (source["checkpoint"], source["step"]) == (os.path.abspath(prefix), record["step"])
  model = LEO(config.model)
  tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
  support, query = _task(5, 1, 10, seed=16)
  served = _call(tf.saved_model.load(version_dir), "serving_default", support, query)
  reference = _reference(model, support, query, num_val=2)
  np.testing.assert_allclose(served["probabilities"], reference["probabilities"], atol=1e-5)
