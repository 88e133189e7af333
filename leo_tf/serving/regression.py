"""The regression SavedModel's signature: the generator of f_theta, adapted per request.

serving_default(support_x [K, 1], support_y [K, 1], query_x [Q, 1]) -> mean [Q, 1]
(the average of S sampled functions at the queries) and samples [S, Q, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from leo_tf.regression import leo
from leo_tf.regression import tasks as tasks_lib
from leo_tf.serving import savedmodel

SERVING_SIGNATURE = savedmodel.SERVING_SIGNATURE

_REGRESSION_SIGNATURE = (
    tf.TensorSpec([None, 1], tf.float32, name="support_x"),  # [K, 1]
    tf.TensorSpec([None, 1], tf.float32, name="support_y"),  # [K, 1]
    tf.TensorSpec([None, 1], tf.float32, name="query_x"),  # [Q, 1]
)
FORMAT = "leo_tf regression SavedModel export, version 1"
WARMUP_TASK = (5, 100)  # (K, Q) of the warmup request


class RegressionServingModule(tf.Module):
  """What is saved: serving_default and the tf.Variables it reads (savedmodel.served_variables).

  serving_default(support_x [K, 1], support_y [K, 1], query_x [Q, 1]) ->
    mean [Q, 1]: the average of the sampled functions at the queries;
    samples [S, Q, 1]: S sampled functions (codes and parameters sampled,
      adapted on the support set), as evaluation draws them.
  The draws use a stateless seed fixed at export, so a request always gets the
  same samples (reproducible answers; send the request again, get the same).
  """

  def __init__(self, model: leo.LEORegression, num_samples: int, seed: int):
    super().__init__(name="leo_regression_serving")
    self.served_variables = savedmodel.served_variables(model)
    sample_seed = tf.constant([seed, 0], tf.int32)

    @tf.function(input_signature=_REGRESSION_SIGNATURE, jit_compile=False)
    def predict(support_x: tf.Tensor, support_y: tf.Tensor, query_x: tf.Tensor
                ) -> dict[str, tf.Tensor]:
      """support_x, support_y [K, 1], query_x [Q, 1] -> mean [Q, 1], samples [S, Q, 1]."""
      k = tf.shape(support_x)[0]
      checks = [
          lambda: tf.debugging.Assert(k > 0, ["support_x is empty; send K >= 1 support points "
                                              "as [K, 1]."]),
          lambda: tf.debugging.Assert(
              tf.equal(tf.shape(support_y)[0], k),
              ["support_y must have one target per support input, [K, 1] like support_x; "
               "shapes:", tf.shape(support_x), tf.shape(support_y)]),
          lambda: tf.debugging.assert_all_finite(
              support_x, message="support_x contains NaN or Inf; send finite inputs"),
          lambda: tf.debugging.assert_all_finite(
              support_y, message="support_y contains NaN or Inf; send finite targets"),
          lambda: tf.debugging.assert_all_finite(
              query_x, message="query_x contains NaN or Inf; send finite inputs"),
      ]
      done = []
      for check in checks:  # in order: the first problem is the one reported
        with tf.control_dependencies(done):
          done = [check()]
      with tf.control_dependencies(done):
        tasks = tasks_lib.RegressionTasks(
            tr_input=tf.identity(support_x)[None], tr_output=support_y[None],  # [1, K, 1]
            val_input=query_x[None], val_output=None, val_target=None)  # [1, Q, 1]
      samples = model(tasks, training=False, seed=sample_seed,
                      num_samples=num_samples).val_predictions[0]  # [1, S, Q, 1] -> [S, Q, 1]
      samples = tf.cast(samples, tf.float32)
      return {"mean": tf.reduce_mean(samples, axis=0), "samples": samples}  # [Q, 1], [S, Q, 1]

    self.predict = predict


def warmup_requests(model_name: str = savedmodel.DEFAULT_MODEL_NAME) -> list[Any]:
  """One PredictionLog (tensorflow_serving.apis) of a K = 5, Q = 100 request."""
  num_tr, num_queries = WARMUP_TASK
  rng = np.random.default_rng(0)
  inputs = {"support_x": rng.uniform(-5, 5, (num_tr, 1)), "support_y": rng.normal(size=(num_tr, 1)),
            "query_x": np.linspace(-5, 5, num_queries)[:, None]}
  return [savedmodel.prediction_log(
      SERVING_SIGNATURE, {key: value.astype(np.float32) for key, value in inputs.items()},
      model_name)]


def servable(model: leo.LEORegression, run_config, num_samples: int | None = None
             ) -> tuple[tf.Module, dict[str, Any], dict[str, Any], list]:
  """(module, signatures, record fields, warmup logs) of a regression export.

  num_samples: S, sampled functions per request (default run_config.num_eval_samples).
  """
  num_samples = num_samples or run_config.num_eval_samples
  module = RegressionServingModule(model, num_samples, run_config.eval_seed)
  record = {
      "format": FORMAT,
      "signatures": {
          SERVING_SIGNATURE: "LEO regression generator: encoder + relation network, "
                             f"{run_config.model.inner_unroll_length} latent steps, "
                             f"{num_samples} sampled functions",
          "inputs": {"support_x": "float32 [K, 1]", "support_y": "float32 [K, 1]",
                     "query_x": "float32 [Q, 1]"},
          "outputs": {"mean": "float32 [Q, 1], average of the samples",
                      "samples": f"float32 [{num_samples}, Q, 1]"},
          "seed": f"stateless, fixed at export: [{run_config.eval_seed}, 0]"},
  }
  return module, {SERVING_SIGNATURE: module.predict}, record, warmup_requests()
