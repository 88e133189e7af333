"""What the serving tests (and the export command's test) share: a small LEO run folder
whose variables are moved off their initial values, raw tasks, the in-memory reference,
and calls of an exported signature.

The model is a small LEO (D = 32, n_z = 8); its variables are moved off their
initial values so that adaptation changes the answer.
"""

import dataclasses
import importlib.util
import json
import os

import numpy as np
import tensorflow as tf

from leo_tf.classification import experiment
from leo_tf.classification.leo import ProblemInstance
from leo_tf.core.config import ModelConfig, OuterConfig
from leo_tf.data import embeddings
from leo_tf.images import backbones
from leo_tf.images import pretrain
from leo_tf.outer import checkpoints
from tests.paths import REPO

D, NZ = 32, 8
# A small conv4 for the image signatures: 28x28 grayscale Omniglot drawings -> D features.
BACKBONE = backbones.BackboneConfig(conv4_channels=(8, 8, 16, D))
SUBPROCESS_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def load_script(name):
  """One of the scripts in export/ (grpc_client, make_request) as a module."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "export", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_config(checkpoint_path):
  return experiment.RunConfig(
      model=ModelConfig(embedding_dim=D, num_latents=NZ, inner_unroll_length=2,
                        finetuning_unroll_length=2, dropout_rate=0.3),
      outer=OuterConfig(checkpoint_path=str(checkpoint_path), seed=2), progress=False)


def trained_run(config, seed):
  """A RunState of the run whose variables are moved off their initial values."""
  run = checkpoints.RunState(config.outer.checkpoint_path,
                             lambda: experiment.build_learner(config), config.outer)
  rng = np.random.default_rng(seed)
  model = run.model
  for kernel in model.regularized_kernels:
    kernel.assign(kernel.numpy() * rng.uniform(0.5, 1.5, kernel.shape))
  model.inner_lr.assign(rng.uniform(0.5, 2.0, [NZ]))  # alpha
  model.finetuning_lr.assign(rng.uniform(0.05, 0.3, [D]))  # eta
  return run


def task(num_classes, num_examples, num_queries, seed):
  """Raw (unnormalised, shifted, rescaled) support [N, K, D] and query [Q, D]."""
  rng = np.random.default_rng(seed)

  def raw(shape):
    scale = rng.uniform(0.5, 5.0, shape[:-1] + (1,))
    return ((rng.standard_normal(shape) + 0.3) * scale).astype(np.float32)

  return raw((num_classes, num_examples, D)), raw((num_queries, D))


def reference(model, support, query, num_val):
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


def call(loaded, signature, support, query):
  """A classification signature of a loaded SavedModel on one task: outputs as arrays."""
  outputs = loaded.signatures[signature](support=tf.constant(support), query=tf.constant(query))
  return {name: value.numpy() for name, value in outputs.items()}


def write_backbone(folder, seed=0):
  """Writes a small stage-1 backbone as pretrain.pretrain does; returns the folder.

  pretrain_info.json and backbone.weights.h5 of BACKBONE, its weights and its
  batch-norm statistics (running means and variances, scales, offsets) moved off
  their initial values, so that inference mode (running statistics) matters.
  """
  backbone = backbones.build(BACKBONE, seed=seed)
  rng = np.random.default_rng(seed)
  for layer in backbone.layers:
    if layer.name.endswith("_bn"):
      gamma, beta, mean, variance = layer.get_weights()
      layer.set_weights([rng.uniform(0.5, 2.0, gamma.shape), rng.normal(0.2, 0.3, beta.shape),
                         rng.normal(0.1, 0.2, mean.shape), rng.uniform(0.05, 0.5, variance.shape)])
  os.makedirs(folder, exist_ok=True)
  backbone.save_weights(os.path.join(folder, pretrain.WEIGHTS_FILE))
  info = {"config": dataclasses.asdict(pretrain.PretrainConfig(backbone=BACKBONE)),
          "embedding_dim": D, "best_epoch": 0}
  with open(os.path.join(folder, pretrain.INFO_FILE), "w") as f:
    json.dump(info, f)
  return folder
