"""tf.distribute: mirrored on two logical CPUs equals one device; two workers train together.

Logical devices must be configured before TensorFlow starts, so each check runs
in a fresh process.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

MIRRORED_CHECK = textwrap.dedent("""
    import json, sys
    from leo_tf import distribute
    distribute.configure_cpu_devices(2)
    import numpy as np
    import tensorflow as tf
    from leo_tf import outer, testing
    from leo_tf.config import ModelConfig, OuterConfig
    from leo_tf.episodes import ProblemInstance
    from leo_tf.model import LEO, Noise

    config = ModelConfig(embedding_dim=16, num_latents=4, inner_unroll_length=2,
                         finetuning_unroll_length=2, dropout_rate=0.3, kl_weight=0.1)
    outer_config = OuterConfig(outer_lr=1e-2, jit_compile=True)
    problem = ProblemInstance(*[tf.constant(a) for a in testing.random_problem(8, 3, 2, 4, 16)])

    single = LEO(config, seed=0)
    single_optimizer = outer.make_optimizer(single, outer_config)
    noise = single.draw_noise(problem, tf.constant([1, 2]))
    grads, single_metrics = outer.meta_gradients(single, problem, None, outer_config, noise=noise)
    single_optimizer.apply_gradients(zip(grads, single.meta_variables))

    strategy = distribute.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    with strategy.scope():
      model = LEO(config, seed=0)
      optimizer = outer.make_optimizer(model, outer_config)
    step, step_with_noise = distribute.make_distributed_train_step(
        model, optimizer, outer_config, strategy)
    half = lambda r, axis: (slice(None),) * axis + (slice(4 * r, 4 * r + 4),)
    problems = distribute.split_for_replicas(
        strategy, lambda r: ProblemInstance(*[a[half(r, 0)] for a in problem]))
    noises = distribute.split_for_replicas(strategy, lambda r: Noise(
        encoder_keep=noise.encoder_keep[half(r, 0)], latent_eps=noise.latent_eps[half(r, 0)],
        weight_eps=noise.weight_eps[half(r, 1)], support_keep=noise.support_keep[half(r, 1)],
        query_keep=noise.query_keep[half(r, 0)]))
    metrics = step_with_noise(problems, noises)
    differences = {v.name: float(np.max(np.abs(v.numpy() - w.numpy())))
                   for v, w in zip(single.meta_variables, model.meta_variables)}
    moved = {v.name: float(np.max(np.abs(v.numpy() - w.numpy())))
             for v, w in zip(single.meta_variables, LEO(config, seed=0).meta_variables)}
    for s in range(3):  # own draws per replica from the step seed; replicas stay in sync
      metrics = step(problems, tf.constant([0, s]))
    mirrored = [v if hasattr(v, "values") else v.value for v in model.meta_variables]
    in_sync = max(float(np.max(np.abs(v.values[0].numpy() - v.values[1].numpy())))
                  for v in mirrored)
    print(json.dumps({"differences": differences, "moved": moved, "in_sync": in_sync,
                      "loss": float(single_metrics.loss),
                      "finite": bool(np.isfinite(float(metrics.loss)))}))
""")


def test_mirrored_on_two_cpus_equals_one_device():
  result = subprocess.run([sys.executable, "-c", MIRRORED_CHECK], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for name, difference in report["differences"].items():
    assert difference < 1e-6, (name, difference)
  assert min(report["moved"].values()) > 1e-4  # the step really changed every variable
  assert report["in_sync"] == 0.0
  assert report["finite"]
