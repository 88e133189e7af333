r"""Export a trained LEO as a SavedModel that TF Serving loads, adaptation included.

    python -m leo_tf.export --checkpoint_path=runs/leo --export_dir=/models/leo

takes the best checkpoint of the run in `checkpoint_path` (or the one named by
--checkpoint) and the run's config.json, and writes the next version of the
model under the model base path that TF Serving watches:

  <export_dir>/<version>/saved_model.pb, variables/    the SavedModel
  <export_dir>/<version>/assets.extra/leo_config.json  run configuration and source
                                                       checkpoint (TF Serving ignores it)
  <export_dir>/<version>/assets.extra/tf_serving_warmup_requests
                                                       PredictionLog records that TF
                                                       Serving replays before serving

The version is written as `<export_dir>/.tmp-<version>-<pid>` (TF Serving only
loads folders named by an integer) and renamed to `<version>` when complete,
so a server never sees half an export. A checkpoint is identified by the
SHA-256 of its files; exporting one that a version already holds is refused.

One SavedModel serves any N-way K-shot task. Both signatures take raw
(unnormalised) embeddings and normalise them as the training data is:

  support  float32 [N, K, D]  K examples of class n in row n (N >= 2, K >= 1)
  query    float32 [Q, D]     examples to classify (Q >= 0)

and return

  probabilities       float32 [Q, N]  softmax of the classifier's logits
  classes             int64   [Q]     argmax over the N classes
  classifier_weights  float32 [N, D]  the classifier, mean over the K copies
  adapted_latents     float32 [N, n_z] the class codes (copy k = 0 of K)

`serving_default` is the whole of LEO in evaluation mode (algorithm 1 without
sampling or dropout): codes from the encoder and relation network, latent
adaptation, fine-tuning. `generate` is the conditional generator alone: the
encoder's mean codes decoded to the decoder's mean weights, no adaptation
(its adapted_latents are the unadapted codes). Malformed requests fail with
InvalidArgument errors that say what to send. The functions are plain graphs:
no XLA, which TF Serving builds may lack.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import hashlib
import json
import os
import re
import shutil
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import leo_tf
from leo_tf.core import classifier
from leo_tf.data import embeddings
from leo_tf.core import inner_loops
from leo_tf.classification import experiment as trainer
from leo_tf.classification.leo import LEO

SERVING_SIGNATURE = "serving_default"  # the full model: generator + both inner loops
GENERATE_SIGNATURE = "generate"  # the conditional generator alone
EXTRA_DIR = "assets.extra"  # TF Serving reads only the warmup file from it
CONFIG_FILE = "leo_config.json"
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving looks for
FORMAT = "leo_tf SavedModel export, version 1"
# (N, K, Q) of the warmup requests: 5-way 1-shot and 5-way 5-shot, 75 queries.
WARMUP_TASKS = ((5, 1, 75), (5, 5, 75))
DEFAULT_MODEL_NAME = "leo"

_INPUT_SIGNATURE = (
    # D is left dynamic on purpose: a wrong D then reaches the explicit check
    # below (a clear InvalidArgument) instead of failing inside an einsum.
    tf.TensorSpec([None, None, None], tf.float32, name="support"),  # [N, K, D]
    tf.TensorSpec([None, None], tf.float32, name="query"),  # [Q, D]
)


def check_request(support: tf.Tensor, query: tf.Tensor, embedding_dim: int
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """Checks a request in the graph; returns the inputs with static D.

  The checks run in this order, each after the previous one (so the first
  problem is the one reported): D of support, D of query, empty support, N >= 2,
  finite support, finite query. Every later op depends on them.

  Args:
    support: float32 [N, K, D'] as received.
    query: float32 [Q, D'] as received.
    embedding_dim: D, the model's embedding size.

  Returns:
    (support [N, K, D], query [Q, D]), the same values.

  Raises:
    tf.errors.InvalidArgumentError (when the graph runs) naming the input and
    what to send instead.
  """
  d = embedding_dim
  support_shape = tf.shape(support, out_type=tf.int64)  # [3]: N, K, D'
  query_shape = tf.shape(query, out_type=tf.int64)  # [2]: Q, D'
  checks = [
      lambda: tf.debugging.Assert(
          tf.equal(support_shape[2], d),
          [f"support must be [N, K, D] with D = {d}, the embedding size this model was trained "
           f"on; send embeddings of size {d}.", "support shape:", support_shape]),
      lambda: tf.debugging.Assert(
          tf.equal(query_shape[1], d),
          [f"query must be [Q, D] with D = {d}, the embedding size this model was trained on; "
           f"send embeddings of size {d}.", "query shape:", query_shape]),
      lambda: tf.debugging.Assert(
          support_shape[0] * support_shape[1] > 0,
          ["support is empty (N = 0 classes or K = 0 examples per class); send [N, K, D] with "
           "N >= 2 classes and K >= 1 examples of each.", "support shape:", support_shape]),
      lambda: tf.debugging.Assert(
          support_shape[0] >= 2,
          ["support has fewer than 2 classes; a task needs N >= 2 classes, one per row of "
           "support [N, K, D].", "support shape:", support_shape]),
      lambda: tf.debugging.assert_all_finite(
          support, message="support contains NaN or Inf; send finite embeddings"),
      lambda: tf.debugging.assert_all_finite(
          query, message="query contains NaN or Inf; send finite embeddings"),
  ]
  done = []
  for check in checks:
    with tf.control_dependencies(done):
      result = check()
    done = [result]
  with tf.control_dependencies(done):
    support = tf.ensure_shape(tf.identity(support), [None, None, d])  # [N, K, D]
    query = tf.ensure_shape(tf.identity(query), [None, d])  # [Q, D]
  return support, query


def classify(model: LEO, support: tf.Tensor, query: tf.Tensor, *, adapt: bool
             ) -> dict[str, tf.Tensor]:
  """LEO in evaluation mode on one task given as support set and queries.

  This is the evaluation path of LEO.__call__ (means, no dropout) for B = 1,
  spelled out so that the queries need not be grouped by class: they are the
  rows of one [1, 1, Q, D] block, whose logits classifier.logits computes
  against all N classes. tests/test_export.py checks that the numbers equal
  those of LEO.__call__.

  Args:
    model: a LEO.
    support: [N, K, D] L2-normalised support embeddings, row n of class n.
    query: [Q, D] L2-normalised query embeddings.
    adapt: run latent adaptation and fine-tuning (the config's numbers of
      steps); False gives the conditional generator alone.

  Returns:
    probabilities [Q, N], classes int64 [Q], classifier_weights [N, D],
    adapted_latents [N, n_z], all float32 except classes.
  """
  c = model.config
  support = tf.cast(support, model.dtype)
  query = tf.cast(query, model.dtype)
  num_classes, num_examples = tf.unstack(tf.shape(support)[:2])
  tr_input = support[None]  # [N, K, D] -> [1, N, K, D]
  labels = tf.range(num_classes, dtype=tf.int32)[None, :, None]  # [1, N, 1]: n in row n
  tr_output = tf.broadcast_to(labels, [1, num_classes, num_examples])  # [1, N, K]
  val_input = query[None, None]  # [Q, D] -> [1, 1, Q, D]

  latents, _ = model.encode(tr_input, training=False)  # [1, N, K, n_z] means

  def decode_fn(z, i):
    del i  # no sampling in evaluation
    # The mean weight vector of each class, as LEO.adapt decodes it.
    return model.decoder.class_weights_distribution(z).loc  # [1, N, 1, D]

  def loss_fn(w, i):
    del i  # no dropout in evaluation
    return classifier.inner_loss(tr_input, tr_output, w)[0]  # [1, N, K]

  latents, weights, _ = inner_loops.leo_inner_loop(
      latents, model.inner_lr, decode_fn, loss_fn,
      num_steps=c.inner_unroll_length if adapt else 0)
  weights = inner_loops.finetuning_inner_loop(  # the class mean moves at eta / K (LEO.adapt)
      weights, model.finetuning_lr / tf.cast(num_examples, model.dtype), loss_fn,
      num_steps=c.finetuning_unroll_length if adapt else 0)
  logits = classifier.logits(val_input, weights)[0, 0]  # [1, 1, Q, N] -> [Q, N]
  probabilities = tf.nn.softmax(logits, axis=-1)  # [Q, N]
  return {
      "probabilities": tf.cast(probabilities, tf.float32),
      "classes": tf.argmax(logits, axis=-1, output_type=tf.int64),  # [Q]
      "classifier_weights": tf.cast(weights[0, :, 0], tf.float32),  # [1, N, 1, D] -> [N, D]
      # The K copies of a class's codes are equal in evaluation.
      "adapted_latents": tf.cast(latents[0, :, 0], tf.float32),  # [1, N, K, n_z] -> [N, n_z]
  }


def _tf_variable(variable) -> tf.Variable:
  """The tf.Variable that a Keras 3 variable holds (a tf.Variable is returned as is)."""
  if isinstance(variable, keras.Variable):
    return variable.value  # the backend's tf.Variable, which the traced functions read
  return variable


class ServingModule(tf.Module):
  """What is saved: the two signature functions and the tf.Variables they read.

  The LEO is deliberately not an attribute. Tracked through its Keras layers,
  each Keras 3 variable is exported as a new copy of the tf.Variable it holds
  (keras Variable._export_to_saved_model_graph), and the SavedModel's saver
  restores the copy while the functions read the original: TF2's Python loader
  copes, but a TF1-style loader (TF Serving, `saved_model_cli run`) leaves the
  variables the functions read uninitialised. Tracking the tf.Variables
  themselves, as keras.export.ExportArchive does, gives one variable each.
  """

  def __init__(self, model: LEO):
    super().__init__(name="leo_serving")
    # Keys are the variables' paths ("relation_network/w0" -> "relation_network-w0").
    self.served_variables = {
        getattr(v, "path", v.name.split(":")[0]).replace("/", "-"): _tf_variable(v)
        for v in model.meta_variables}
    embedding_dim = model.config.embedding_dim

    def run(support: tf.Tensor, query: tf.Tensor, adapt: bool) -> dict[str, tf.Tensor]:
      support, query = check_request(support, query, embedding_dim)
      support = tf.nn.l2_normalize(support, axis=-1)  # [N, K, D], as embeddings.l2_normalize_rows
      query = tf.nn.l2_normalize(query, axis=-1)  # [Q, D]
      return classify(model, support, query, adapt=adapt)

    @tf.function(input_signature=_INPUT_SIGNATURE, jit_compile=False)
    def adapt_and_classify(support: tf.Tensor, query: tf.Tensor) -> dict[str, tf.Tensor]:
      """serving_default: support [N, K, D], query [Q, D] -> outputs (module docstring)."""
      return run(support, query, adapt=True)

    @tf.function(input_signature=_INPUT_SIGNATURE, jit_compile=False)
    def generate(support: tf.Tensor, query: tf.Tensor) -> dict[str, tf.Tensor]:
      """generate: the same without latent adaptation and fine-tuning."""
      return run(support, query, adapt=False)

    self.adapt_and_classify = adapt_and_classify
    self.generate = generate


def checkpoint_sha256(prefix: str) -> str:
  """SHA-256 of a checkpoint's files (<prefix>.index and <prefix>.data-*), in name order.

  Only the contents and the suffixes after the prefix count, so a copied or
  renamed checkpoint has the same digest.
  """
  files = sorted(glob.glob(glob.escape(prefix) + ".data-*"))
  index = prefix + ".index"
  if not os.path.isfile(index) or not files:
    raise FileNotFoundError(
        f"No checkpoint at {prefix!r} ({index} or its .data-* files are missing); pass the "
        "prefix that tf.train.Checkpoint wrote, e.g. runs/leo/best/ckpt-1000.")
  digest = hashlib.sha256()
  for path in [index, *files]:
    digest.update(path[len(prefix):].encode("utf-8") + b"\0")  # ".index", ".data-..."
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()


def versions(export_dir: str) -> list[int]:
  """The versions in a model base path: its folders named by an integer, sorted."""
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(name) for name in os.listdir(export_dir)
                if re.fullmatch(r"[0-9]+", name) and os.path.isdir(os.path.join(export_dir, name)))


def read_export_config(version_dir: str) -> dict[str, Any]:
  """The leo_config.json written beside a SavedModel."""
  with open(os.path.join(version_dir, EXTRA_DIR, CONFIG_FILE)) as f:
    return json.load(f)


def warmup_requests(embedding_dim: int, model_name: str = DEFAULT_MODEL_NAME, seed: int = 0
                    ) -> list[Any]:
  """PredictionLog protos for TF Serving's warmup: WARMUP_TASKS for both signatures.

  The embeddings are random (standard normal, seeded); only their shapes matter.

  Returns:
    tensorflow_serving.apis.prediction_log_pb2.PredictionLog, one per
    (signature, task), serving_default first.
  """
  try:
    from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Writing TF Serving warmup requests needs tensorflow-serving-api: "
                      "pip install 'tensorflow-serving-api~=2.21.0'.") from e
  rng = np.random.default_rng(seed)
  logs = []
  for signature in (SERVING_SIGNATURE, GENERATE_SIGNATURE):
    for num_classes, num_examples, num_queries in WARMUP_TASKS:
      support = rng.standard_normal((num_classes, num_examples, embedding_dim)).astype(np.float32)
      query = rng.standard_normal((num_queries, embedding_dim)).astype(np.float32)
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
      request.inputs["support"].CopyFrom(tf.make_tensor_proto(support))
      request.inputs["query"].CopyFrom(tf.make_tensor_proto(query))
      logs.append(prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request)))
  return logs


def _write_warmup_requests(path: str, embedding_dim: int) -> None:
  with tf.io.TFRecordWriter(path) as writer:
    for log in warmup_requests(embedding_dim):
      writer.write(log.SerializeToString())


def _fsync_tree(folder: str) -> None:
  """Flushes every file and folder under `folder` to disk (before the rename)."""
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        os.fsync(f.fileno())
    embeddings.fsync_dir(root)


def export_model(model: LEO, run_config: trainer.RunConfig, export_dir: str,
                 source: dict[str, Any]) -> str:
  """Writes `model` as the next version under `export_dir`; returns the version folder.

  Args:
    model: the LEO to export (its variables as they are now).
    run_config: the run's configuration, recorded in leo_config.json.
    export_dir: the model base path (created if missing).
    source: where the variables came from (checkpoint prefix, sha256, step, ...),
      recorded in leo_config.json.

  Returns:
    <export_dir>/<version>.

  Raises:
    FileExistsError: another process published the same version meanwhile.
  """
  os.makedirs(export_dir, exist_ok=True)
  existing = versions(export_dir)
  version = existing[-1] + 1 if existing else 1
  final_dir = os.path.join(export_dir, str(version))
  tmp_dir = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
  if os.path.exists(tmp_dir):
    shutil.rmtree(tmp_dir)  # left by a crashed export of this same pid number
  module = ServingModule(model)
  try:
    tf.saved_model.save(
        module, tmp_dir,
        signatures={SERVING_SIGNATURE: module.adapt_and_classify,
                    GENERATE_SIGNATURE: module.generate})
    extra = os.path.join(tmp_dir, EXTRA_DIR)
    os.makedirs(extra, exist_ok=True)
    _write_warmup_requests(os.path.join(extra, WARMUP_FILE), model.config.embedding_dim)
    record = {
        "format": FORMAT,
        "version": version,
        "source": source,
        "model": dataclasses.asdict(model.config),
        "run_config": run_config.to_dict(),
        "signatures": {
            SERVING_SIGNATURE: "encoder + relation network, latent adaptation "
                               f"({model.config.inner_unroll_length} steps), fine-tuning "
                               f"({model.config.finetuning_unroll_length} steps)",
            GENERATE_SIGNATURE: "conditional generator alone: encoder mean codes, decoder "
                                "mean weights, no adaptation",
            "inputs": {"support": "float32 [N, K, D], raw embeddings, class n in row n",
                       "query": "float32 [Q, D], raw embeddings"},
            "outputs": {"probabilities": "float32 [Q, N]", "classes": "int64 [Q]",
                        "classifier_weights": "float32 [N, D], mean over the K copies",
                        "adapted_latents": "float32 [N, n_z], copy k = 0 of the K equal "
                                           "copies (generate: the unadapted codes)"},
            "embedding_dim": model.config.embedding_dim,
            "num_latents": model.config.num_latents,
        },
        "leo_tf_version": leo_tf.__version__,
        "tensorflow_version": tf.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(os.path.join(extra, CONFIG_FILE), "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
      f.write("\n")
    _fsync_tree(tmp_dir)
    if os.path.exists(final_dir):
      raise FileExistsError(
          f"Version {version} appeared in {export_dir!r} during this export (another export "
          "running?); run the export again to write the next version.")
    os.rename(tmp_dir, final_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  embeddings.fsync_dir(export_dir)
  return final_dir


def _checkpoint_step(prefix: str) -> int | None:
  """The training step stored in a trainer checkpoint, if it has one."""
  try:
    return int(tf.train.load_variable(prefix, "step/.ATTRIBUTES/VARIABLE_VALUE"))
  except (tf.errors.NotFoundError, ValueError):
    return None


def export_checkpoint(checkpoint_path: str, export_dir: str, checkpoint: str | None = None, *,
                      allow_duplicate: bool = False) -> str:
  """Exports a training run's best (or named) checkpoint as the next version.

  Args:
    checkpoint_path: the training run's folder (holds config.json and best/).
    export_dir: the model base path TF Serving watches (e.g. /models/leo).
    checkpoint: a checkpoint prefix to export instead of the best one (e.g.
      runs/leo/ckpt/ckpt-3000).
    allow_duplicate: write a new version even if one already holds this
      checkpoint (e.g. after a change to the export code).

  Returns:
    The version folder written, <export_dir>/<version>.

  Raises:
    FileNotFoundError: no config.json, no best checkpoint, or no checkpoint at
      the given prefix.
    FileExistsError: a version in export_dir already holds this checkpoint.
    ValueError: the checkpoint does not hold this configuration's model.
  """
  config_file = os.path.join(checkpoint_path, "config.json")
  if not os.path.isfile(config_file):
    raise FileNotFoundError(
        f"No {config_file}: --checkpoint_path must be the folder of a training run "
        "(python -m leo_tf.train writes config.json there).")
  with open(config_file) as f:
    config_dict = json.load(f)
  if config_dict.get("problem") == "regression":  # sines and lines: leo_tf.regression.experiment
    from leo_tf.regression import experiment as regression_trainer  # pylint: disable=g-import-not-at-top
    return regression_trainer.export_checkpoint(checkpoint_path, export_dir, checkpoint,
                                                allow_duplicate=allow_duplicate)
  run_config = trainer.RunConfig.from_dict(config_dict)
  if checkpoint is None:
    prefix, record = trainer.best_checkpoint(checkpoint_path)
  else:
    prefix, record = checkpoint, {"step": _checkpoint_step(checkpoint)}
  sha256 = checkpoint_sha256(prefix)
  if not allow_duplicate:
    for version in versions(export_dir):
      version_dir = os.path.join(export_dir, str(version))
      try:
        held = read_export_config(version_dir)["source"]["sha256"]
      except (OSError, ValueError, KeyError):
        continue  # not one of ours, or not readable: it cannot hold this checkpoint
      if held == sha256:
        raise FileExistsError(
            f"Version {version} ({version_dir}) already holds checkpoint {prefix} (sha256 "
            f"{sha256[:12]}...); it is not exported again. Pass --allow_duplicate "
            "(allow_duplicate=True) to write it as a new version anyway.")

  model = LEO(run_config.model, seed=run_config.outer.seed)
  try:
    # read() is the counterpart of the trainer's write(); the optimizer, step and
    # the rest of the training state in the checkpoint are not needed.
    tf.train.Checkpoint(model=model).read(prefix).expect_partial(
        ).assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:  # a variable missing, or of another shape
    missing = re.findall(r"path=([^,\s]+)", str(e))  # the message prints their values too
    detail = f"not in the checkpoint: {', '.join(missing)}" if missing else str(e)[:500]
    raise ValueError(
        f"Checkpoint {prefix} does not hold the model that {config_file} describes "
        f"(embedding_dim={run_config.model.embedding_dim}, num_latents="
        f"{run_config.model.num_latents}); export it with its own run folder ({detail}).",
    ) from None
  source = {
      "checkpoint_path": os.path.abspath(checkpoint_path),
      "checkpoint": os.path.abspath(prefix),
      "sha256": sha256,
      "step": record.get("step"),
      "metavalid_accuracy": record.get("metavalid_accuracy"),
  }
  return export_model(model, run_config, export_dir, source)


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]} (flags look like --name=value).")
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # keep TensorFlow's INFO lines off the console
  f = flags.FLAGS
  try:
    version_dir = export_checkpoint(f.checkpoint_path, f.export_dir, f.checkpoint or None,
                                    allow_duplicate=f.allow_duplicate)
  except (ValueError, OSError) as e:
    raise SystemExit(f"leo_tf.export: error: {e}") from None
  record = read_export_config(version_dir)
  # The signatures as written (a regression export has serving_default only), read from
  # saved_model.pb without loading the model.
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(version_dir, "saved_model.pb"), "rb") as proto_file:
    saved_model.ParseFromString(proto_file.read())
  signatures = ", ".join(sorted(k for k in saved_model.meta_graphs[0].signature_def
                                if not k.startswith("__")))  # not __saved_model_init_op
  print(f"Exported {record['source']['checkpoint']} (step {record['source']['step']}) to "
        f"{version_dir}\nsignatures: {signatures}; serve with "
        f"TF Serving's --model_base_path={os.path.abspath(f.export_dir)} (see export/README.md).")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint_path", None,
                      "The training run's folder (holds config.json and best/).")
  flags.DEFINE_string("export_dir", None,
                      "The model base path: the version is written to <export_dir>/<N>.")
  flags.DEFINE_string("checkpoint", "",
                      "A checkpoint prefix to export instead of the run's best one.")
  flags.DEFINE_bool("allow_duplicate", False,
                    "Write a new version even if one in export_dir holds this checkpoint.")
  flags.mark_flags_as_required(["checkpoint_path", "export_dir"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
