"""The classification SavedModel's signatures: LEO's adaptation on each task of a request.

One SavedModel serves any N-way K-shot task. `serving_default` and `generate`
take raw (unnormalised) embeddings of one task and normalise them as the
training data is:

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
The functions are plain graphs by default: TF Serving runs XLA only when started
with --xla_cpu_compilation_enabled=true. With jit_compile, LEO's part of each
signature (task_function) is compiled with XLA, for servers that allow it.

Beside them (ServingModule): `embeddings_batched` takes B tasks on axis 0
(support [B, N, K, D], query [B, Q, D]) for TF Serving's batcher; with stage
1's backbone (serving.images.FrontEnd) `images`, `image_bytes` and their
`_batched` forms take uint8 pixels or PNG / JPEG files instead. These answer
probabilities and classes only, unless exported with full_outputs. Every task
of a batched request is answered bit for bit as alone (classify_tasks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from leo_tf.classification.leo import LEO
from leo_tf.core import classifier
from leo_tf.serving import images
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
# N K of a task at most: the relation network compares every pair of support examples,
# [N K, N K, 2 n_z] floats per layer (500: 250,000 pairs, 128 MB at n_z = 64), so a request
# of 10,000 examples would need 51 GB and take the server down.
MAX_SUPPORT_EXAMPLES = 500
# tf.nn.l2_normalize divides by max(|x|^2, epsilon)^(1/2): an embedding of squared
# norm below it (all zeros) is not made a unit vector, and gives uniform probabilities.
_L2_EPSILON = 1e-12
_SHOWN = savedmodel.SHOWN


def check_request(support: tf.Tensor, query: tf.Tensor, embedding_dim: int, *,
                  batched: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
  """Checks a request in the graph; returns the inputs with static shapes.

  The checks run in this order, each once the previous one has passed (so the
  first problem is the one reported): rank of support, rank of query, D of
  support, D of query, (batched) the same B >= 1 in both, empty support,
  N >= 2, finite support, finite query, no all-zero support embedding, no
  all-zero query embedding. Every later op depends on them.

  Args:
    support: float32 [N, K, D'] ([B, N, K, D'] batched) as received (any rank).
    query: float32 [Q, D'] ([B, Q, D'] batched) as received (any rank).
    embedding_dim: D, the model's embedding size.
    batched: whether the task axis B comes first.

  Returns:
    (support [N, K, D], query [Q, D]) or, batched, ([B, N, K, D], [B, Q, D]),
    the same values.

  Raises:
    tf.errors.InvalidArgumentError (when the graph runs) naming the input and
    what to send instead.
  """
  d = embedding_dim
  b = "B, " if batched else ""
  s_rank, q_rank = (4, 3) if batched else (3, 2)
  tasks = "B tasks of N classes" if batched else "N classes"
  zero = ("{} has an all-zero embedding (L2 norm below 1e-6), which cannot be L2-normalised; "
          "send embeddings with non-zero values.")
  # The data of the Asserts are strings and int32 tensors: plain Assert ops, not ones
  # inside a tf.cond.
  checks = [
      lambda s, q: tf.debugging.Assert(tf.equal(tf.rank(s), s_rank), [
          f"support must be rank {s_rank}, [{b}N, K, D] with D = {d}: {tasks}, K examples of "
          f"each; for one example per class send [{b}N, 1, D].", "support shape:", tf.shape(s)],
          _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.rank(q), q_rank), [
          f"query must be rank {q_rank}, [{b}Q, D] with D = {d}: one row per example to "
          f"classify; for a single query send [{b}1, D].", "query shape:", tf.shape(q)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.shape(s)[-1], d), [  # [.., D'] -> D'
          f"support must be [{b}N, K, D] with D = {d}, the embedding size this model was "
          f"trained on; send embeddings of size {d}.", "support shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.shape(q)[-1], d), [  # [.., D'] -> D'
          f"query must be [{b}Q, D] with D = {d}, the embedding size this model was trained "
          f"on; send embeddings of size {d}.", "query shape:", tf.shape(q)], _SHOWN),
  ]
  if batched:
    checks.append(lambda s, q: tf.debugging.Assert(
        tf.logical_and(tf.equal(tf.shape(s)[0], tf.shape(q)[0]), tf.shape(s)[0] > 0), [
            "support and query must hold the same number B >= 1 of tasks on axis 0; send task "
            "b's support and queries at index b of both.", "support shape:", tf.shape(s),
            "query shape:", tf.shape(q)], _SHOWN))
  first = 1 if batched else 0  # the axis of N
  checks += [
      lambda s, q: tf.debugging.Assert(tf.size(s) > 0, [  # (B) N K D, with B, D > 0 checked
          "support is empty (N = 0 classes or K = 0 examples per class); send "
          f"[{b}N, K, D] with N >= 2 classes and K >= 1 examples of each.", "support shape:",
          tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.shape(s)[first] >= 2, [  # [(B,) N, K, D] -> N
          "support has fewer than 2 classes; a task needs N >= 2 classes, one per row of "
          f"support [{b}N, K, D].", "support shape:", tf.shape(s)], _SHOWN),
      lambda s, q: assert_support_size(tf.shape(s)[first:first + 2], "support"),
      lambda s, q: tf.debugging.check_numerics(
          s, message="support contains NaN or Inf; send finite embeddings"),
      lambda s, q: tf.debugging.check_numerics(
          q, message="query contains NaN or Inf; send finite embeddings"),
      lambda s, q: _assert_nonzero(s, zero.format("support"), f"[{b.lower()}n, k] of the first:"),
      lambda s, q: _assert_nonzero(q, zero.format("query"), f"[{b.lower()}q] of the first:"),
  ]
  support, query = savedmodel.chain_checks(checks, support, query)
  # Static shapes for what follows, set by reshapes (no-ops on a checked request).
  # Not tf.ensure_shape: grappler's shape inference carries its shape back to the
  # inputs, and constant folding then ran tf.shape(support)[2] of a rank-2
  # support before the rank check (slice index 2 of dimension 0 out of bounds).
  if batched:
    tasks, classes, examples = tf.unstack(tf.shape(support)[:3], num=3)  # -> B, N, K
    return (tf.reshape(support, [tasks, classes, examples, d]),  # [B, N, K, D]
            tf.reshape(query, [tasks, -1, d]))  # [B, Q, D]
  num_classes, num_examples = tf.unstack(tf.shape(support)[:2], num=2)  # [N, K, D] -> N, K
  support = tf.reshape(support, [num_classes, num_examples, d])  # [N, K, D]
  query = tf.reshape(query, [-1, d])  # [Q, D]
  return support, query


def assert_support_size(num_classes_examples: tf.Tensor, name: str) -> tf.Operation:
  """Asserts N K <= MAX_SUPPORT_EXAMPLES for int32 [2] (N, K) of the input `name`."""
  return tf.debugging.Assert(tf.reduce_prod(num_classes_examples) <= MAX_SUPPORT_EXAMPLES, [
      f"{name} holds more than {MAX_SUPPORT_EXAMPLES} examples in a task (N K; the relation "
      "network compares every pair); send fewer classes or fewer examples per class. [N K]:",
      num_classes_examples], _SHOWN)


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


def task_function(model: LEO, *, adapt: bool, jit_compile: bool = False):
  """LEO on one checked task, as a tf.function: raw support [N, K, D], query [Q, D] -> outputs.

  L2-normalises both as the training data is (embeddings.l2_normalize_rows),
  then `classify`. Every signature calls one of these two functions (adapt or
  not) on each task of a request, so a task's answer is the same whichever
  signature carries it and whatever shares its request (see classify_tasks).

  jit_compile: compile it with XLA, once per task shape (N, K, Q). About 5
  times faster on a CPU, but the servers must run XLA: TF Serving only with
  --xla_cpu_compilation_enabled=true (export/README.md); the C API and Python
  loaders of the tensorflow wheel run it as they are.
  """
  embedding_dim = model.config.embedding_dim

  def one_task(support: tf.Tensor, query: tf.Tensor) -> dict[str, tf.Tensor]:
    return classify(model, tf.nn.l2_normalize(support, axis=-1),  # [N, K, D]
                    tf.nn.l2_normalize(query, axis=-1), adapt=adapt)  # [Q, D]

  return tf.function(one_task, jit_compile=jit_compile, input_signature=(
      tf.TensorSpec([None, None, embedding_dim], tf.float32),
      tf.TensorSpec([None, embedding_dim], tf.float32)))


def classify_tasks(one_task, support: tf.Tensor, query: tf.Tensor, config) -> dict[str, tf.Tensor]:
  """`one_task` (a task_function) on each of B tasks: raw support [B, N, K, D], query [B, Q, D].

  One task at a time (tf.map_fn), each exactly as a single-task request (the
  normalisation too): batched tensor ops round differently with the batch size
  (a reduction over D of B N K rows is not the same as of N K rows), and the TF
  Serving batcher must not change an answer by putting a request beside others.
  config: the learner's ModelConfig (D, n_z).

  Returns:
    probabilities [B, Q, N], classes int64 [B, Q], classifier_weights [B, N, D],
    adapted_latents [B, N, n_z].
  """
  spec = {"probabilities": tf.TensorSpec([None, None], tf.float32),
          "classes": tf.TensorSpec([None], tf.int64),
          "classifier_weights": tf.TensorSpec([None, config.embedding_dim], tf.float32),
          "adapted_latents": tf.TensorSpec([None, config.num_latents], tf.float32)}
  return tf.map_fn(lambda task: one_task(*task), (support, query), fn_output_signature=spec,
                   parallel_iterations=1)


# Signatures beside serving_default and generate (export/README.md lists them all).
EMBEDDINGS_BATCHED = "embeddings_batched"  # support [B, N, K, D], query [B, Q, D]
IMAGES = "images"  # support_images uint8 [N, K, H, W, C], query_images [Q, H, W, C]
IMAGES_BATCHED = "images_batched"  # [B, N, K, H, W, C], [B, Q, H, W, C]
IMAGE_BYTES = "image_bytes"  # support_image_bytes string [N, K], query_image_bytes [Q]
IMAGE_BYTES_BATCHED = "image_bytes_batched"  # [B, N, K], [B, Q]
ANSWERS = ("probabilities", "classes")  # what every signature returns
ADAPTED = ("classifier_weights", "adapted_latents")  # and with full_outputs (always: the
# embedding signatures serving_default and generate, as before)
EMBEDDINGS = ("support_embeddings", "query_embeddings")  # image signatures with full_outputs


def _spec(dtype: tf.DType, name: str) -> tf.TensorSpec:
  # Any rank, so that a request of the wrong rank reaches the checks (see _INPUT_SIGNATURE).
  return tf.TensorSpec(None, dtype, name=name)


class ServingModule(tf.Module):
  """What is saved: the signature functions and the tf.Variables they read.

  The LEO (and the backbone) are deliberately not attributes
  (savedmodel.served_variables says why).

  Args:
    model: the LEO.
    front_end: stage 1's embedding function (serving.images.FrontEnd), for the
      image signatures; None: embedding signatures only.
    full_outputs: the batched and image signatures also return
      classifier_weights and adapted_latents (and the image signatures the
      raw embeddings); by default they return probabilities and classes only.
    jit_compile: LEO's part of every signature (task_function) compiled with
      XLA; the checks, the backbone and the task loop stay plain graph ops.
  """

  def __init__(self, model: LEO, front_end: images.FrontEnd | None = None,
               full_outputs: bool = False, jit_compile: bool = False):
    super().__init__(name="leo_serving")
    self.served_variables = savedmodel.served_variables(model)
    embedding_dim = model.config.embedding_dim
    kept = ANSWERS + ADAPTED if full_outputs else ANSWERS
    # Traced once each: one function in the SavedModel's library that every signature calls.
    adapt_one = task_function(model, adapt=True, jit_compile=jit_compile)
    generate_one = task_function(model, adapt=False, jit_compile=jit_compile)

    @tf.function(input_signature=_INPUT_SIGNATURE, jit_compile=False)
    def adapt_and_classify(support: tf.Tensor, query: tf.Tensor) -> dict[str, tf.Tensor]:
      """serving_default: support [N, K, D], query [Q, D] -> outputs (module docstring)."""
      return adapt_one(*check_request(support, query, embedding_dim))

    @tf.function(input_signature=_INPUT_SIGNATURE, jit_compile=False)
    def generate(support: tf.Tensor, query: tf.Tensor) -> dict[str, tf.Tensor]:
      """generate: the same without latent adaptation and fine-tuning."""
      return generate_one(*check_request(support, query, embedding_dim))

    def adapt_tasks(support: tf.Tensor, query: tf.Tensor) -> dict[str, tf.Tensor]:
      """Raw support [B, N, K, D], query [B, Q, D] (checked) -> classify_tasks' outputs."""
      return classify_tasks(adapt_one, support, query, model.config)

    @tf.function(input_signature=(_spec(tf.float32, "support"), _spec(tf.float32, "query")),
                 jit_compile=False)
    def embeddings_batched(support: tf.Tensor, query: tf.Tensor) -> dict[str, tf.Tensor]:
      """support [B, N, K, D], query [B, Q, D] -> probabilities [B, Q, N], classes [B, Q]."""
      support, query = check_request(support, query, embedding_dim, batched=True)
      outputs = adapt_tasks(support, query)
      return {name: outputs[name] for name in kept}

    self.adapt_and_classify = adapt_and_classify
    self.generate = generate
    self.embeddings_batched = embeddings_batched
    self.signature_functions = {SERVING_SIGNATURE: adapt_and_classify, GENERATE_SIGNATURE: generate,
                       EMBEDDINGS_BATCHED: embeddings_batched}
    if front_end is None:
      return
    if front_end.embedding_dim != embedding_dim:
      raise ValueError(
          f"The backbone gives {front_end.embedding_dim}-d features but the LEO was trained on "
          f"D = {embedding_dim}; export with the stage-1 folder whose embeddings the run was "
          "trained on.")
    self.backbone_variables = front_end.variables()
    channels = front_end.channels
    embed = tf.function(front_end.embed, jit_compile=False, input_signature=(
        tf.TensorSpec([None, None, None, channels], tf.uint8),))  # traced once, as adapt_one

    def run_images(support_pixels: tf.Tensor, query_pixels: tf.Tensor, batched: bool,
                   names: tuple[str, str]) -> dict[str, tf.Tensor]:
      """Checked pixels [B, N, K, H, W, C], [B, Q, H, W, C] -> outputs ([B, ...] if batched)."""
      support_shape, query_shape = tf.shape(support_pixels), tf.shape(query_pixels)
      image_shape = support_shape[3:]  # [H, W, C]
      flat = tf.concat([tf.reshape(support_pixels, tf.concat([[-1], image_shape], 0)),
                        tf.reshape(query_pixels, tf.concat([[-1], image_shape], 0))],
                       axis=0)  # [B N K + B Q, H, W, C]
      features = embed(flat)  # [B N K + B Q, F]
      num_support = tf.reduce_prod(support_shape[:3])  # B N K
      support = tf.reshape(features[:num_support],
                           tf.concat([support_shape[:3], [embedding_dim]], 0))
      query = tf.reshape(features[num_support:], tf.concat([query_shape[:2], [embedding_dim]], 0))
      # [B N K, F] -> [B, N, K, F]; [B Q, F] -> [B, Q, F]
      s_index, q_index = ("[b, n, k]", "[b, q]") if batched else ("[n, k]", "[q]")
      zero = ("{0} gives an all-zero embedding (the backbone's features of an image are all 0), "
              "which cannot be L2-normalised; send images with content (not blank ones).")
      checks = [
          lambda s, q: _assert_nonzero(s if batched else s[0], zero.format(names[0]),
                                       f"{s_index} of the first:"),
          lambda s, q: _assert_nonzero(q if batched else q[0], zero.format(names[1]),
                                       f"{q_index} of the first:"),
      ]
      support, query = savedmodel.chain_checks(checks, support, query)
      if not batched:  # [1, ...] -> [...]; the one task without the task loop
        support, query = support[0], query[0]
      outputs = adapt_tasks(support, query) if batched else adapt_one(support, query)
      outputs = {name: value for name, value in outputs.items() if name in kept}
      if full_outputs:
        outputs.update(support_embeddings=support, query_embeddings=query)
      return outputs

    def pixels_signature(batched: bool):
      @tf.function(input_signature=(_spec(tf.uint8, "support_images"),
                                    _spec(tf.uint8, "query_images")), jit_compile=False)
      def classify_images(support_images: tf.Tensor, query_images: tf.Tensor
                          ) -> dict[str, tf.Tensor]:
        """uint8 support_images [(B,) N, K, H, W, C], query_images [(B,) Q, H, W, C]."""
        support, query = images.check_images(support_images, query_images, channels,
                                             batched=batched, support_size=assert_support_size)
        return run_images(support, query, batched, ("support_images", "query_images"))
      return classify_images

    def bytes_signature(batched: bool):
      @tf.function(input_signature=(_spec(tf.string, "support_image_bytes"),
                                    _spec(tf.string, "query_image_bytes")), jit_compile=False)
      def classify_image_bytes(support_image_bytes: tf.Tensor, query_image_bytes: tf.Tensor
                               ) -> dict[str, tf.Tensor]:
        """PNG or JPEG files: support_image_bytes [(B,) N, K], query_image_bytes [(B,) Q]."""
        names = ("support_image_bytes", "query_image_bytes")
        support, query = images.decode(support_image_bytes, query_image_bytes, channels,
                                       batched=batched, support_size=assert_support_size)
        support, query = images.check_images(support, query, channels, batched=True, names=names,
                                             support_size=assert_support_size)
        return run_images(support, query, batched, names)
      return classify_image_bytes

    self.images = pixels_signature(batched=False)
    self.images_batched = pixels_signature(batched=True)
    self.image_bytes = bytes_signature(batched=False)
    self.image_bytes_batched = bytes_signature(batched=True)
    self.signature_functions.update({IMAGES: self.images, IMAGES_BATCHED: self.images_batched,
                            IMAGE_BYTES: self.image_bytes,
                            IMAGE_BYTES_BATCHED: self.image_bytes_batched})


def warmup_requests(embedding_dim: int, model_name: str = savedmodel.DEFAULT_MODEL_NAME,
                    seed: int = 0, front_end: images.FrontEnd | None = None) -> list[Any]:
  """PredictionLog protos for TF Serving's warmup.

  WARMUP_TASKS for serving_default and generate (as before), then one 5-way
  1-shot task with 5 queries for each further signature (B = 2 for the batched
  ones; images of the backbone's size S x S).

  The embeddings and pixels are random (seeded); only their shapes matter.

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
  n, k, q, b = 5, 1, 5, 2
  logs.append(savedmodel.prediction_log(EMBEDDINGS_BATCHED, {
      "support": rng.standard_normal((b, n, k, embedding_dim)).astype(np.float32),
      "query": rng.standard_normal((b, q, embedding_dim)).astype(np.float32)}, model_name))
  if front_end is None:
    return logs
  size, channels = front_end.image_size, front_end.channels
  support = rng.integers(0, 256, (b, n, k, size, size, channels), dtype=np.uint8)
  query = rng.integers(0, 256, (b, q, size, size, channels), dtype=np.uint8)
  support_files = np.array([[[tf.io.encode_png(support[i, j, m]).numpy() for m in range(k)]
                             for j in range(n)] for i in range(b)], dtype=object)  # [B, N, K]
  query_files = np.array([[tf.io.encode_png(query[i, j]).numpy() for j in range(q)]
                          for i in range(b)], dtype=object)  # [B, Q]
  logs += [
      savedmodel.prediction_log(IMAGES, {"support_images": support[0],
                                         "query_images": query[0]}, model_name),
      savedmodel.prediction_log(IMAGES_BATCHED, {"support_images": support,
                                                 "query_images": query}, model_name),
      savedmodel.prediction_log(IMAGE_BYTES, {"support_image_bytes": support_files[0],
                                              "query_image_bytes": query_files[0]}, model_name),
      savedmodel.prediction_log(IMAGE_BYTES_BATCHED, {"support_image_bytes": support_files,
                                                      "query_image_bytes": query_files},
                                model_name),
  ]
  return logs


def servable(model: LEO, run_config, front_end: images.FrontEnd | None = None,
             full_outputs: bool = False, jit_compile: bool = False
             ) -> tuple[tf.Module, dict[str, Any], dict[str, Any], list]:
  """(module, signatures, record fields, warmup logs) of a classification export.

  front_end: stage 1's embedding function for the image signatures (None: none).
  full_outputs, jit_compile: see ServingModule.
  """
  module = ServingModule(model, front_end, full_outputs, jit_compile)
  record = {"format": FORMAT, "model": dataclasses.asdict(model.config),
            "signatures": signature_record(model, front_end, full_outputs),
            "jit_compile": jit_compile}
  if front_end is not None:
    record["front_end"] = {**front_end.record, "embed_chunk": front_end.chunk,
                           "embed_pad": front_end.pad,
                           "max_image_side": images.MAX_IMAGE_SIDE}
  return module, module.signature_functions, record, warmup_requests(model.config.embedding_dim,
                                                            front_end=front_end)


def signature_record(model: LEO, front_end: images.FrontEnd | None = None,
                     full_outputs: bool = False) -> dict[str, Any]:
  """What leo_config.json says of the signatures."""
  record = {
      SERVING_SIGNATURE: "encoder + relation network, latent adaptation "
                         f"({model.config.inner_unroll_length} steps), fine-tuning "
                         f"({model.config.finetuning_unroll_length} steps)",
      GENERATE_SIGNATURE: "conditional generator alone: encoder mean codes, decoder "
                          "mean weights, no adaptation",
      EMBEDDINGS_BATCHED: "serving_default on B tasks: support [B, N, K, D], query [B, Q, D]",
      "inputs": {"support": "float32 [N, K, D], raw embeddings, class n in row n",
                 "query": "float32 [Q, D], raw embeddings"},
      "outputs": {"probabilities": "float32 [Q, N]", "classes": "int64 [Q]",
                  "classifier_weights": "float32 [N, D], mean over the K copies",
                  "adapted_latents": "float32 [N, n_z], copy k = 0 of the K equal "
                                     "copies (generate: the unadapted codes)"},
      "embedding_dim": model.config.embedding_dim,
      "num_latents": model.config.num_latents,
      "full_outputs": full_outputs,
  }
  if front_end is not None:
    size, channels = front_end.image_size, front_end.channels
    record.update({
        IMAGES: f"serving_default on uint8 images [N, K, H, W, C], [Q, H, W, C], C = {channels}, "
                f"resized to {size} x {size} and embedded by stage 1's backbone",
        IMAGES_BATCHED: "images on B tasks: [B, N, K, H, W, C], [B, Q, H, W, C]",
        IMAGE_BYTES: "images from PNG or JPEG files: string [N, K], [Q]",
        IMAGE_BYTES_BATCHED: "image_bytes on B tasks: string [B, N, K], [B, Q]",
    })
  return record
