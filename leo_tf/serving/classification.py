"""The classification SavedModel's signatures: LEO's adaptation on one task per request.

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
(its adapted_latents are the unadapted codes). Malformed requests (wrong rank
or D, empty support, N < 2, NaN or Inf, an all-zero embedding) fail with
InvalidArgument errors that name the input and say what to send (check_request).
The functions are plain graphs: no XLA, which TF Serving builds may lack.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from leo_tf.classification.leo import LEO
from leo_tf.core import classifier
from leo_tf.serving import savedmodel

SERVING_SIGNATURE = savedmodel.SERVING_SIGNATURE  # the full model: generator + both inner loops
GENERATE_SIGNATURE = "generate"  # the conditional generator alone
FORMAT = "leo_tf SavedModel export, version 1"
# (N, K, Q) of the warmup requests: 5-way 1-shot and 5-way 5-shot, 75 queries.
WARMUP_TASKS = ((5, 1, 75), (5, 5, 75))


_INPUT_SIGNATURE = (
    # Rank and D are left dynamic on purpose: a request of the wrong rank (say
    # support [N, D], without the K axis) or the wrong D then reaches the explicit
    # checks below (a clear InvalidArgument) instead of failing inside a slice or
    # an einsum. A rank in the signature would not be checked when the graph runs,
    # and would let TensorFlow fold tf.rank to a constant.
    tf.TensorSpec(None, tf.float32, name="support"),  # [N, K, D]
    tf.TensorSpec(None, tf.float32, name="query"),  # [Q, D]
)
# tf.nn.l2_normalize divides by max(|x|^2, epsilon)^(1/2): an embedding of squared
# norm below it (all zeros) is not made a unit vector, and gives uniform probabilities.
_L2_EPSILON = 1e-12
_SHOWN = 8  # entries of each tensor that a failed check prints: shapes up to rank 8


def check_request(support: tf.Tensor, query: tf.Tensor, embedding_dim: int
                  ) -> tuple[tf.Tensor, tf.Tensor]:
  """Checks a request in the graph; returns the inputs with static shapes.

  The checks run in this order, each once the previous one has passed (so the
  first problem is the one reported): rank of support, rank of query, D of
  support, D of query, empty support, N >= 2, finite support, finite query, no
  all-zero support embedding, no all-zero query embedding. Every later op
  depends on them.

  Args:
    support: float32 [N, K, D'] as received (any rank).
    query: float32 [Q, D'] as received (any rank).
    embedding_dim: D, the model's embedding size.

  Returns:
    (support [N, K, D], query [Q, D]), the same values.

  Raises:
    tf.errors.InvalidArgumentError (when the graph runs) naming the input and
    what to send instead.
  """
  d = embedding_dim
  zero = ("{} has an all-zero embedding (L2 norm below 1e-6), which cannot be L2-normalised; "
          "send embeddings with non-zero values.")
  # Each check reads (support, query) as passed on by the one before it. The
  # data of the Asserts are strings and int32 tensors: plain Assert ops, not ones
  # inside a tf.cond.
  checks = [
      lambda s, q: tf.debugging.Assert(tf.equal(tf.rank(s), 3), [
          f"support must be rank 3, [N, K, D] with D = {d}: N classes, K examples of each; "
          "for one example per class send [N, 1, D].", "support shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.rank(q), 2), [
          f"query must be rank 2, [Q, D] with D = {d}: one row per example to classify; for a "
          "single query send [1, D].", "query shape:", tf.shape(q)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.shape(s)[2], d), [  # [N, K, D'] -> D'
          f"support must be [N, K, D] with D = {d}, the embedding size this model was trained "
          f"on; send embeddings of size {d}.", "support shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.shape(q)[1], d), [  # [Q, D'] -> D'
          f"query must be [Q, D] with D = {d}, the embedding size this model was trained on; "
          f"send embeddings of size {d}.", "query shape:", tf.shape(q)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.size(s) > 0, [  # N K D, with D = d > 0 checked
          "support is empty (N = 0 classes or K = 0 examples per class); send [N, K, D] with "
          "N >= 2 classes and K >= 1 examples of each.", "support shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.shape(s)[0] >= 2, [  # [N, K, D] -> N
          "support has fewer than 2 classes; a task needs N >= 2 classes, one per row of "
          "support [N, K, D].", "support shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.check_numerics(
          s, message="support contains NaN or Inf; send finite embeddings"),
      lambda s, q: tf.debugging.check_numerics(
          q, message="query contains NaN or Inf; send finite embeddings"),
      lambda s, q: _assert_nonzero(s, zero.format("support"), "[n, k] of the first:"),
      lambda s, q: _assert_nonzero(q, zero.format("query"), "[q] of the first:"),
  ]
  for check in checks:
    # The next check reads these identities, so its shapes, slices and reductions
    # run only on inputs that passed the checks before it (tf.shape(s)[2] only on
    # a rank-3 support).
    with tf.control_dependencies([check(support, query)]):
      support, query = tf.identity(support), tf.identity(query)
  # Static shapes for what follows, set by reshapes (no-ops on a checked request).
  # Not tf.ensure_shape: grappler's shape inference carries its shape back to the
  # inputs, and constant folding then ran tf.shape(support)[2] of a rank-2
  # support before the rank check (slice index 2 of dimension 0 out of bounds).
  num_classes, num_examples = tf.unstack(tf.shape(support)[:2], num=2)  # [N, K, D] -> N, K
  support = tf.reshape(support, [num_classes, num_examples, d])  # [N, K, D]
  query = tf.reshape(query, [-1, d])  # [Q, D]
  return support, query


def _assert_nonzero(x: tf.Tensor, message: str, where: str) -> tf.Operation:
  """Asserts that every embedding (last axis) of x [..., D] has |x|^2 >= _L2_EPSILON.

  The error prints message, where, and the index of the first zero embedding
  into x's leading axes (int32 [1, rank - 1]: [[n k]] of support, [[q]] of query).
  """
  nonzero = tf.reduce_sum(tf.square(x), axis=-1) >= _L2_EPSILON  # [..., D] -> [...]
  every = tf.reduce_all(nonzero, axis=None)  # [...] -> [], over every embedding
  # [M, rank - 1] (M zero embeddings) -> [min(M, 1), rank - 1]
  first = tf.cast(tf.where(tf.logical_not(nonzero))[:1], tf.int32)
  return tf.debugging.Assert(every, [message, where, first], _SHOWN)


def classify(model: LEO, support: tf.Tensor, query: tf.Tensor, *, adapt: bool
             ) -> dict[str, tf.Tensor]:
  """LEO in evaluation mode on one task given as support set and queries.

  The support set goes through the model's own adaptation (LEO.adapt, B = 1);
  the queries need not be grouped by class: they are the rows of one
  [1, 1, Q, D] block, whose logits classifier.logits computes against all N
  classes.

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
  support = tf.cast(support, model.dtype)
  query = tf.cast(query, model.dtype)
  num_classes, num_examples = tf.unstack(tf.shape(support)[:2])
  tr_input = support[None]  # [N, K, D] -> [1, N, K, D]
  labels = tf.range(num_classes, dtype=tf.int32)[None, :, None]  # [1, N, 1]: n in row n
  tr_output = tf.broadcast_to(labels, [1, num_classes, num_examples])  # [1, N, K]
  _, _, latents, weights, _ = model.adapt(tr_input, tr_output, training=False,
                                          adaptation=adapt)  # [1, N, K, n_z], [1, N, 1, D]
  logits = classifier.logits(query[None, None], weights)[0, 0]  # [1, 1, Q, N] -> [Q, N]
  probabilities = tf.nn.softmax(logits, axis=-1)  # [Q, N]
  return {
      "probabilities": tf.cast(probabilities, tf.float32),
      "classes": tf.argmax(logits, axis=-1, output_type=tf.int64),  # [Q]
      "classifier_weights": tf.cast(weights[0, :, 0], tf.float32),  # [1, N, 1, D] -> [N, D]
      # The K copies of a class's codes are equal in evaluation.
      "adapted_latents": tf.cast(latents[0, :, 0], tf.float32),  # [1, N, K, n_z] -> [N, n_z]
  }


class ServingModule(tf.Module):
  """What is saved: the two signature functions and the tf.Variables they read.

  The LEO is deliberately not an attribute (savedmodel.served_variables says why).
  """

  def __init__(self, model: LEO):
    super().__init__(name="leo_serving")
    self.served_variables = savedmodel.served_variables(model)
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


def warmup_requests(embedding_dim: int, model_name: str = savedmodel.DEFAULT_MODEL_NAME, seed: int = 0
                    ) -> list[Any]:
  """PredictionLog protos for TF Serving's warmup: WARMUP_TASKS for both signatures.

  The embeddings are random (standard normal, seeded); only their shapes matter.

  Returns:
    tensorflow_serving.apis.prediction_log_pb2.PredictionLog, one per
    (signature, task), serving_default first.
  """
  rng = np.random.default_rng(seed)
  logs = []
  for signature in (SERVING_SIGNATURE, GENERATE_SIGNATURE):
    for num_classes, num_examples, num_queries in WARMUP_TASKS:
      support = rng.standard_normal((num_classes, num_examples, embedding_dim)).astype(np.float32)
      query = rng.standard_normal((num_queries, embedding_dim)).astype(np.float32)
      logs.append(savedmodel.prediction_log(signature, {"support": support, "query": query},
                                            model_name))
  return logs


def servable(model: LEO, run_config) -> tuple[tf.Module, dict[str, Any], dict[str, Any], list]:
  """(module, signatures, record fields, warmup logs) of a classification export."""
  module = ServingModule(model)
  signatures = {SERVING_SIGNATURE: module.adapt_and_classify, GENERATE_SIGNATURE: module.generate}
  record = {"format": FORMAT, "model": dataclasses.asdict(model.config),
            "signatures": signature_record(model)}
  return module, signatures, record, warmup_requests(model.config.embedding_dim)


def signature_record(model: LEO) -> dict[str, Any]:
  """What leo_config.json says of the signatures."""
  return {
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
  }
