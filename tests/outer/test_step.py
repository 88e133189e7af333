"""leo_tf.outer.step, the outer update: NaN/Inf fallback, clipping, and the compiled step."""

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.classification import evaluation
from leo_tf.classification.leo import LEO
from leo_tf.core.config import ModelConfig, OuterConfig
from leo_tf.data import random_problems as testing
from leo_tf.outer import step as outer

N, K, V, D, NZ = 3, 2, 3, 8, 4


def _model(**overrides):
  settings = dict(embedding_dim=D, num_latents=NZ, inner_unroll_length=2,
                  finetuning_unroll_length=1, dropout_rate=0.0)
  settings.update(overrides)
  config = ModelConfig(**settings)
  return LEO(config, seed=0)


def _problem(batch=4, seed=0):
  return testing.random_problem(batch, N, K, V, D, seed=seed)


def _meta_gradients(model, problem, seed, config):
  """outer.meta_gradients with the step's draws from `seed`, as the train step makes them."""
  return outer.meta_gradients(model, problem, model.draw_noise(problem, seed), config)


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_nan_or_inf_falls_back_to_the_l2_gradient(poison):
  model = _model()
  problem = _problem()
  problem.tr_input[0, 0, 0, 0] = poison  # forced NaN/Inf in one task's support set
  config = OuterConfig(gradient_threshold=0.0, gradient_norm_threshold=0.0)  # no clipping
  grads, metrics = _meta_gradients(model, problem, tf.constant([0, 0]), config)
  assert metrics["fallback"].numpy() == 1.0
  assert not np.isfinite(metrics["loss"].numpy())
  for var, grad in zip(model.meta_variables, grads):
    if any(var is k for k in model.regularized_kernels):
      # d/dw of 1e-4 * ||w||^2 / 2 is 1e-4 * w: the gradients, not the variables.
      np.testing.assert_allclose(grad.numpy(), 1e-4 * var.numpy(), rtol=1e-6)
    else:  # the learning rates carry no L2 term
      np.testing.assert_array_equal(grad.numpy(), 0.0)


def test_finite_loss_keeps_the_meta_gradient():
  model = _model()
  config = OuterConfig(gradient_threshold=0.0, gradient_norm_threshold=0.0)
  grads, metrics = _meta_gradients(model, _problem(), tf.constant([0, 0]), config)
  assert metrics["fallback"].numpy() == 0.0
  fallback = outer.fallback_gradients(model)
  assert not np.allclose(grads[0].numpy(), fallback[0].numpy())
  assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_clipping_by_value_then_by_norm_per_tensor():
  a = np.array([0.5, -0.05, 0.02, -3.0])
  b = np.array([[0.01, 0.02], [0.03, -0.04]])
  clipped = outer.clip_gradients([tf.constant(a), tf.constant(b)], 0.1, 0.1)
  a_value = np.clip(a, -0.1, 0.1)  # [0.1, -0.05, 0.02, -0.1]
  a_expected = a_value * 0.1 / np.linalg.norm(a_value)  # norm 0.1509 > 0.1: rescaled
  np.testing.assert_allclose(clipped[0].numpy(), a_expected, rtol=1e-12)
  np.testing.assert_allclose(clipped[1].numpy(), b, rtol=1e-12)  # norm 0.0548 < 0.1: unchanged
  unclipped = outer.clip_gradients([tf.constant(a)], 0.0, 0.0)
  np.testing.assert_array_equal(unclipped[0].numpy(), a)


def test_train_step_updates_every_variable_and_xla_matches_graph():
  problem = _problem(batch=6)
  results = {}
  for jit in (False, True):
    model = _model(dropout_rate=0.3)  # random draws are made outside XLA: same numbers
    config = OuterConfig(outer_lr=1e-3, jit_compile=jit)
    optimizer = outer.make_optimizer(model, config)
    step = outer.make_train_step(model, optimizer, config)
    before = [v.numpy().copy() for v in model.meta_variables]
    metrics = [step(problem, tf.constant([0, s])) for s in range(3)]
    after = [v.numpy() for v in model.meta_variables]
    for b, a, v in zip(before, after, model.meta_variables):
      assert not np.allclose(a, b), f"{v.name} did not move"
    results[jit] = (after, [m["loss"].numpy() for m in metrics])
    assert int(optimizer.iterations.numpy()) == 3
  for a, b in zip(results[False][0], results[True][0]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(results[False][1], results[True][1], rtol=1e-4)


def test_meta_training_lowers_the_loss_on_a_fixed_batch():
  model = _model()
  config = OuterConfig(outer_lr=3e-3, jit_compile=True)
  step = outer.make_train_step(model, outer.make_optimizer(model, config), config)
  problem = _problem(batch=8, seed=3)
  eval_step = evaluation.make_eval_step(model)
  before = float(np.mean(eval_step(problem)[1]))
  for s in range(40):
    step(problem, tf.constant([0, s]))
  after = float(np.mean(eval_step(problem)[1]))
  assert after < before - 0.05, (before, after)


def test_outer_adam_is_the_originals_tf1_adam():
  # tf.compat.v1.train.AdamOptimizer (the original's): m, v moving averages and
  # var -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + 1e-8). Gradients of size
  # 1e-8 make the epsilon matter: Keras' default 1e-7 would move var half as far.
  variable = tf.Variable(np.array([0.5, -1.0, 2.0]), dtype=tf.float64)
  holder = type("Holder", (), {"meta_variables": [variable]})()
  optimizer = outer.make_optimizer(holder, OuterConfig(outer_lr=1e-3))
  m, v = np.zeros(3), np.zeros(3)
  rng = np.random.default_rng(0)
  for t in range(1, 4):
    grad = 1e-8 * rng.standard_normal(3)
    before = variable.numpy()
    optimizer.apply_gradients([(tf.constant(grad), variable)])
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad ** 2
    update = -1e-3 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-8)
    # Keras rounds the rate and the betas to float32: 1 - beta_2 is 0.000999987,
    # so the update is 6.6e-6 off in relative terms (epsilon 1e-7 would be 0.9 off).
    np.testing.assert_allclose(variable.numpy() - before, update, rtol=2e-5, atol=0)
