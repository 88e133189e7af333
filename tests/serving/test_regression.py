"""serving.regression: a regression run that regression.experiment.train wrote, exported and
served: shapes, the mean of the samples, the same numbers as the restored model with the
export's seed, a bad request, TF Serving's TF1 session, and what leo_config.json records.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core.config import OuterConfig
from leo_tf.outer import checkpoints
from leo_tf.regression import experiment
from leo_tf.regression import leo
from leo_tf.regression import maml as maml_lib
from leo_tf.regression import tasks as tasks_lib
from leo_tf.serving import export
from leo_tf.serving import publish
from leo_tf.serving import regression


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
  """A short LEO regression run (4 steps, the best checkpoint at step 4)."""
  path = str(tmp_path_factory.mktemp("sines"))
  outer = OuterConfig(metatrain_batch_size=4, num_steps_limit=4, outer_lr=3e-3,
                      gradient_threshold=0.0, gradient_norm_threshold=1.0, checkpoint_path=path,
                      checkpoint_steps=4, num_metavalid_tasks=10, num_metatest_tasks=10,
                      metavalid_batch_size=10, metatest_batch_size=10, jit_compile=False)
  config = experiment.RegressionRunConfig(
      model=leo.RegressionConfig(hidden_units=(10, 10), num_latents=4, network_units=6,
                                 inner_unroll_length=2, inner_lr_init=0.1),
      maml=maml_lib.MAMLConfig(hidden_units=(10, 10), num_inner_steps=2), outer=outer,
      models=("leo",), num_eval_samples=10, num_valid_samples=4, num_eval_points=15,
      summary_steps=2, progress=False)
  experiment.train(config)
  return config


def test_export_round_trip(regression_run, tmp_path):
  config = regression_run
  version_dir = export.export_checkpoint(config.outer.checkpoint_path, str(tmp_path / "models"))
  assert version_dir.endswith(os.path.join("models", "1"))
  loaded = tf.saved_model.load(version_dir)
  serve = loaded.signatures["serving_default"]
  support_x = np.array([[-4.0], [-1.0], [0.5], [2.0], [3.5]], np.float32)
  support_y = np.array([[1.0], [0.2], [-0.3], [2.0], [4.0]], np.float32)
  query_x = np.linspace(-5, 5, 9, dtype=np.float32)[:, None]
  out = serve(support_x=support_x, support_y=support_y, query_x=query_x)
  s = config.num_eval_samples
  assert out["mean"].shape == (9, 1) and out["samples"].shape == (s, 9, 1)
  np.testing.assert_allclose(out["mean"].numpy(), out["samples"].numpy().mean(axis=0),
                             rtol=1e-5, atol=1e-6)
  # The same numbers as the trained model in this process, with the export's seed.
  model = experiment.build_learner("leo", config)
  checkpoints.restore_best(model, os.path.join(config.outer.checkpoint_path, "leo"),
                           os.path.join(config.outer.checkpoint_path, checkpoints.CONFIG_FILE))
  tasks = tasks_lib.RegressionTasks(support_x[None], support_y[None], query_x[None], None, None)
  want = model(tasks, training=False, seed=tf.constant([config.eval_seed, 0]),
               num_samples=s).val_predictions[0].numpy()
  np.testing.assert_allclose(out["samples"].numpy(), want, rtol=1e-4, atol=1e-4)
  with pytest.raises(tf.errors.InvalidArgumentError, match="support_y"):
    serve(support_x=support_x, support_y=support_y[:3], query_x=query_x)
  # TF Serving's path: a TF1 session over the SavedModel reads the same variables.
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
    signature = meta.signature_def["serving_default"]
    feed = {signature.inputs[k].name: v for k, v in
            (("support_x", support_x), ("support_y", support_y), ("query_x", query_x))}
    mean = sess.run(signature.outputs["mean"].name, feed)
  np.testing.assert_allclose(mean, out["mean"].numpy(), rtol=1e-5, atol=1e-6)
  with open(os.path.join(version_dir, "assets.extra", "leo_config.json")) as f:
    assert json.load(f)["run_config"]["problem"] == "regression"


def test_export_records_the_source_and_warmup(regression_run, tmp_path):
  config = regression_run
  version_dir = export.export_checkpoint(config.outer.checkpoint_path, str(tmp_path / "models"))
  record = publish.read_export_config(version_dir)
  prefix, best = checkpoints.best_checkpoint(os.path.join(config.outer.checkpoint_path, "leo"))
  assert record["format"] == regression.FORMAT
  assert record["source"]["checkpoint"] == os.path.abspath(prefix)
  assert record["source"]["step"] == best["step"] == 4
  assert record["source"]["metavalid_mse"] == best["metavalid_mse"]
  assert record["source"]["sha256"] == publish.checkpoint_sha256(prefix)
  assert experiment.RegressionRunConfig.from_dict(record["run_config"]) == config
  # One warmup request, K = 5 support points and Q = 100 queries, that the export answers.
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  path = os.path.join(version_dir, publish.EXTRA_DIR, publish.WARMUP_FILE)
  (log,) = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(path)]
  request = log.predict_log.request
  assert request.model_spec.signature_name == "serving_default"
  inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
  assert {k: v.shape for k, v in inputs.items()} == {
      "support_x": (5, 1), "support_y": (5, 1), "query_x": (100, 1)}
  out = tf.saved_model.load(version_dir).signatures["serving_default"](**inputs)
  assert out["samples"].shape == (config.num_eval_samples, 100, 1)
  assert np.all(np.isfinite(out["mean"].numpy()))
