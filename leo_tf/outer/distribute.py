"""Meta-training on several devices or machines with tf.distribute.

`--strategy` on the training entry point picks one of:
  default       one device (tf.distribute's default strategy);
  mirrored      MirroredStrategy over all local GPUs, or, on a machine without
                GPUs, over --num_cpu_devices logical CPU devices;
  multi_worker  MultiWorkerMirroredStrategy over the machines in TF_CONFIG.

The meta-batch of B tasks is split into B / R tasks per replica. Each replica
draws its own tasks (its own episode stream, seeded per replica) and its own
random draws, and runs the XLA-compiled inner loops and second-order
meta-gradient on them (outer.step.raw_meta_gradients). The gradients and metrics
are then all-reduced (mean over replicas, which is the gradient of the mean
over the meta-batch), and the NaN/Inf fallback, clipping and Adam run once on
the global gradient, exactly as on one device (outer.step.finalize_gradients).

A worker lost from a multi-worker job (killed, its machine gone) aborts the
others' collective ops: TensorFlow's coordination service and the gRPC link
report it (UnavailableError "Connection reset by peer", within a second of the
loss on localhost) instead of leaving them waiting. The survivors cannot go on
(their collective state is aborted until the process restarts), so the step
raises WorkerLost, a ConnectionError that says what to do: restart every
worker with the same command, and the job resumes from the chief's latest
checkpoint (outer.checkpoints) with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import keras
import tensorflow as tf

from leo_tf.core.config import OuterConfig
from leo_tf.outer import step as outer_step
from leo_tf.outer.learner import MetaLearner

STRATEGIES = ("default", "mirrored", "multi_worker")
# What a collective op raises when a peer worker or the link to it went away.
PEER_LOST = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
             tf.errors.DeadlineExceededError)


class WorkerLost(ConnectionError):
  """A multi-worker step failed because another worker, or the link to it, is gone."""


def configure_cpu_devices(num_devices: int) -> None:
  """Splits the CPU into `num_devices` logical devices (before TensorFlow starts).

  Raises:
    RuntimeError: TensorFlow's runtime is already initialised (call this first).
  """
  if num_devices <= 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The tf.distribute strategy that `name` (one of STRATEGIES) selects."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise ValueError("strategy=multi_worker needs TF_CONFIG naming the cluster and this "
                       "worker, e.g. {\"cluster\": {\"worker\": [\"host1:12345\", "
                       "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}.")
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes checkpoints, summaries, results and exports."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type == "chief":
    return True
  has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
  return task_type in (None, "worker") and task_id == 0 and not has_chief


def replica_seed(seed: tf.Tensor, replica_id, num_replicas: int) -> tf.Tensor:
  """The int32 [2] seed of one replica's random draws (the step's own on one replica)."""
  if num_replicas == 1:
    return seed
  return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica_id, tf.int32))


def uses_xla(config: OuterConfig, strategy: tf.distribute.Strategy) -> bool:
  """Whether the replicas' step is XLA-compiled.

  XLA runs on a GPU per replica, and on one device per process (one replica
  per worker included). With several replicas on logical CPU devices of one
  process TensorFlow places every compiled call on the first CPU
  ("Trying to access resource ... located in device CPU:1 from device CPU:0"),
  so there the replicas run their step as a plain graph.
  """
  if not config.jit_compile:
    return False
  local_replicas = len(strategy.extended.worker_devices)
  return local_replicas == 1 or bool(tf.config.list_logical_devices("GPU"))


def make_distributed_train_step(model: MetaLearner, optimizer: keras.optimizers.Optimizer,
                                config: OuterConfig, strategy: tf.distribute.Strategy
                                ) -> Callable[[Any, tf.Tensor], outer_step.StepMetrics]:
  """Returns step(batches, seed) -> the step's metrics (means over replicas).

  `batches` is a per-replica value (split_for_replicas), B / R tasks each;
  replica r draws its random numbers from replica_seed(seed, r, R).
  """
  num_replicas = strategy.num_replicas_in_sync

  @tf.function(jit_compile=uses_xla(config, strategy), reduce_retracing=True, autograph=False)
  def compiled_gradients(batch, noise):
    return outer_step.raw_meta_gradients(model, batch, noise)

  def replica_step(batch, seed: tf.Tensor):
    replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
    noise = model.draw_noise(batch, replica_seed(seed, replica_id, num_replicas))
    return compiled_gradients(batch, noise)

  @tf.function(reduce_retracing=True, autograph=False)
  def step(batches, seed: tf.Tensor):
    grads, metrics = strategy.run(replica_step, args=(batches, seed))
    mean = tf.distribute.ReduceOp.MEAN
    grads = [strategy.reduce(mean, g, axis=None) for g in grads]  # all-reduce
    metrics = tf.nest.map_structure(lambda m: strategy.reduce(mean, m, axis=None), metrics)
    grads, metrics = outer_step.finalize_gradients(model, grads, metrics, config)
    optimizer.apply_gradients(zip(grads, model.meta_variables))
    return metrics

  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return step

  def multi_worker_step(batches, seed: tf.Tensor):
    try:
      return step(batches, seed)
    except PEER_LOST as e:
      raise WorkerLost(
          f"a worker of the multi-worker job is gone ({_lost_peer(e)}); this worker cannot go on. "
          "Restart every worker with the same command: the job resumes from the chief's "
          "latest checkpoint.") from None

  return multi_worker_step


def _lost_peer(error: tf.errors.OpError) -> str:
  """'<the peer's task>: <error type>: <the system's text>' from a collective op's error."""
  message = error.message or str(error)
  lines = [line.strip() for line in message.splitlines()
           if line.strip() and not line.startswith((" ", "\t", "Graph execution error",
                                                     "Detected at node"))]
  peer = re.search(r"remote target (/job:[^ ]+)", message)
  cause = f"{type(error).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")
  return f"{peer.group(1)}: {cause}" if peer else cause


def split_for_replicas(strategy: tf.distribute.Strategy, make_value: Callable[[int], object]):
  """Per-replica values: replica r (global id) gets make_value(r)."""
  return strategy.experimental_distribute_values_from_function(
      lambda context: make_value(context.replica_id_in_sync_group))
