"""leo_tf.classification.metasgd: Meta-SGD by hand, against NumPy, by finite
differences, its seeded dropout, its checks, and its outer step learning."""

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.classification import metasgd
from leo_tf.core.config import OuterConfig
from leo_tf.data import random_problems as testing
from leo_tf.outer import step as outer


def _metasgd(d, n, steps, lr=1.0, dtype="float64", dropout=0.0):
  return metasgd.MetaSGD(metasgd.MetaSGDConfig(embedding_dim=d, num_classes=n,
                                               num_inner_steps=steps, inner_lr_init=lr,
                                               dropout_rate=dropout, dtype=dtype))


def test_metasgd_one_step_by_hand(one_task):
  # 2-way 1-shot, x_0 = (1, 0), x_1 = (0, 1), theta_0 = 0, alpha = 2. With the
  # bias feature x' = (x, 1); at theta = 0 both classes have p = 1/2, so the
  # summed loss's gradient for row c is sum_i (1/2 - [y_i = c]) x'_i:
  #   row 0: -1/2 (1, 0, 1) + 1/2 (0, 1, 1) = (-1/2, 1/2, 0), row 1 the opposite.
  # theta' = -2 grad: W'_0 = (1, -1), W'_1 = (-1, 1), biases 0. The query (1, 0)
  # of class 0 gets logits (1, -1): loss log(1 + e^-2) = 0.126928.
  model = _metasgd(2, 2, steps=1, lr=2.0)
  problem = one_task([[[1.0, 0.0]], [[0.0, 1.0]]], [[[1.0, 0.0]], [[0.0, 1.0]]])
  out = model(problem, training=False)
  np.testing.assert_allclose(out.adapted_latents.numpy()[0, :, 0], [[1, -1], [-1, 1]])
  np.testing.assert_allclose(out.val_logits.numpy()[0, 0, 0], [1, -1])
  np.testing.assert_allclose(out.val_loss.numpy(), [np.log1p(np.exp(-2.0))])
  np.testing.assert_allclose(out.val_loss.numpy(), [0.126928], atol=1e-6)
  np.testing.assert_allclose(out.latents.numpy(), np.zeros((1, 2, 1, 2)))


def _numpy_metasgd(theta0, alpha, tr, val, steps):
  """Reference: theta <- theta - alpha * d(sum CE)/d theta, then the mean query CE [B]."""
  def with_one(x):
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1)

  def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)

  b, n, k, _ = tr.shape
  x = with_one(tr)  # [B, N, K, D+1]
  onehot = np.eye(n)[None, :, None, :]  # [1, N, 1, N]: row n is class n
  theta = np.broadcast_to(theta0, (b,) + theta0.shape).copy()  # [B, N, D+1]
  for _ in range(steps):
    p = softmax(np.einsum("bnkd,bcd->bnkc", x, theta))  # [B, N, K, N]
    grad = np.einsum("bnkc,bnkd->bcd", p - onehot, x)  # [B, N, D+1]
    theta = theta - alpha[None] * grad
  q = with_one(val)
  logp = np.log(softmax(np.einsum("bnvd,bcd->bnvc", q, theta)))  # [B, N, V, N]
  loss = -np.sum(logp * onehot, axis=-1)  # [B, N, V]
  return theta, loss.mean(axis=(1, 2))


def test_metasgd_matches_numpy_reference_over_several_steps():
  rng = np.random.default_rng(0)
  b, n, k, v, d = 2, 3, 2, 4, 5
  problem = testing.random_problem(b, n, k, v, d, seed=5, dtype=np.float64)
  model = _metasgd(d, n, steps=3)
  theta0 = rng.normal(size=(n, d + 1)) * 0.3
  alpha = rng.uniform(0.2, 1.5, size=(n, d + 1))
  model.initial_weights.assign(theta0)
  model.inner_lr.assign(alpha)
  theta, loss = _numpy_metasgd(theta0, alpha, problem.tr_input, problem.val_input, 3)
  out = model(problem, training=False)
  np.testing.assert_allclose(out.adapted_latents.numpy()[:, :, 0], theta[..., :-1], rtol=1e-10)
  np.testing.assert_allclose(out.val_loss.numpy(), loss, rtol=1e-10)
  graph = tf.function(lambda p: model(p, training=False).val_loss)(problem)
  np.testing.assert_allclose(graph.numpy(), loss, rtol=1e-10)


def test_metasgd_meta_gradient_matches_finite_differences():
  # Second order: d L_val(theta') / d alpha goes through the inner gradient.
  problem = testing.random_problem(2, 3, 2, 3, 4, seed=7, dtype=np.float64)
  model = _metasgd(4, 3, steps=2, lr=0.7)
  rng = np.random.default_rng(1)
  model.initial_weights.assign(rng.normal(size=(3, 5)) * 0.5)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(model(problem, training=False).val_loss)
  grad_theta, grad_alpha = tape.gradient(loss, model.meta_variables)
  eps = 1e-6
  for var, grad in ((model.inner_lr, grad_alpha), (model.initial_weights, grad_theta)):
    for index in ((0, 0), (2, 4), (1, 2)):
      base = var.numpy()
      values = []
      for sign in (1, -1):
        shifted = base.copy()
        shifted[index] += sign * eps
        var.assign(shifted)
        values.append(float(tf.reduce_mean(model(problem, training=False).val_loss)))
      var.assign(base)
      np.testing.assert_allclose(grad.numpy()[index], (values[0] - values[1]) / (2 * eps),
                                 rtol=1e-6, atol=1e-9)


def test_metasgd_training_dropout_is_seeded_and_noise_equals_seed():
  problem = testing.random_problem(2, 3, 1, 2, 6, seed=2)
  model = _metasgd(6, 3, steps=1, lr=1.0, dtype="float32", dropout=0.5)
  model.initial_weights.assign(np.random.default_rng(0).normal(size=(3, 7)))
  seed = tf.constant([4, 5])
  a = model(problem, training=True, seed=seed).val_loss.numpy()
  b = model(problem, training=True, noise=model.draw_noise(problem, seed)).val_loss.numpy()
  c = model(problem, training=True, seed=tf.constant([4, 6])).val_loss.numpy()
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  with pytest.raises(ValueError, match="pass seed"):
    model(problem, training=True)


def test_metasgd_refuses_another_number_of_classes():
  model = _metasgd(6, 5, steps=1)
  with pytest.raises(ValueError, match="num_classes=3"):
    model(testing.random_problem(1, 3, 1, 2, 6), training=False)
  with pytest.raises(ValueError, match="finetuning_unroll_length"):
    metasgd.MetaSGDConfig(num_inner_steps=0)


def test_metasgd_compiled_outer_step_learns():
  # A fixed 3-way task family: the outer loop must lower the query loss.
  problem = testing.random_problem(6, 3, 1, 4, 8, seed=11)
  problem = problem._replace(
      val_input=np.repeat(problem.tr_input, 4, axis=2) + 0.1 * problem.val_input)
  model = _metasgd(8, 3, steps=1, lr=0.5, dtype="float32")
  config = OuterConfig(outer_lr=0.05, gradient_threshold=0, gradient_norm_threshold=0,
                       jit_compile=False)
  step = outer.make_train_step(model, outer.make_optimizer(model, config), config)
  losses = [float(step(problem, tf.constant([0, i]))["val_loss"]) for i in range(30)]
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(tf.reduce_mean(model.inner_lr)) > 0.5  # alpha grew
