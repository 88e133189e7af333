"""Baselines on the same features: Meta-SGD and the nearest class mean (prototypes)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.data import episodes
from leo_tf.classification import metasgd
from leo_tf.outer import step as outer
from leo_tf.classification import prototypes
from leo_tf.data import synthetic
from leo_tf.data import random_problems as testing
from leo_tf.classification import experiment as trainer
from leo_tf.core.config import DataConfig, ModelConfig, OuterConfig
from leo_tf.data.embeddings import load_split
from leo_tf.data.episodes import ProblemInstance


def _problem(tr, val):
  """One task from support [N, K, D] and query [N, V, D] arrays; row n is class n."""
  tr, val = np.asarray(tr, np.float64)[None], np.asarray(val, np.float64)[None]
  n = tr.shape[1]
  labels = lambda m: np.broadcast_to(np.arange(n, dtype=np.int32)[None, :, None], (1, n, m)).copy()
  return ProblemInstance(tr, labels(tr.shape[2]), val, labels(val.shape[2]))


# ----------------------------------------------------------------------------
# Prototypes.
# ----------------------------------------------------------------------------


def test_prototypes_by_hand():
  # Class means (1, 0) and (0, 1); query (0.6, 0.5) is nearer to (1, 0)
  # (0.16 + 0.25 = 0.41 vs 0.36 + 0.25 = 0.61), query (0.4, 0.5) to (0, 1).
  problem = _problem([[[1.0, 0.5], [1.0, -0.5]], [[0.0, 1.0], [0.0, 1.0]]],
                     [[[0.6, 0.5], [0.4, 0.5]], [[0.0, 2.0], [0.1, 0.9]]])
  # Per-task accuracy: 3 of 4 queries right.
  np.testing.assert_allclose(prototypes.ncm_accuracy(problem), [0.75])
  logits = prototypes.ncm_logits_numpy(problem.tr_input, problem.val_input)
  np.testing.assert_allclose(logits[0, 0, 0], [-0.41, -0.61])
  model = prototypes.Prototypes(prototypes.PrototypesConfig(embedding_dim=2))
  out = model(problem, training=False)
  np.testing.assert_allclose(out.val_accuracy.numpy(), [0.75])
  np.testing.assert_allclose(out.val_logits.numpy()[0, 0, 0], [-0.41, -0.61], rtol=1e-6)
  np.testing.assert_allclose(out.classifier_weights.numpy()[0], [[1, 0], [0, 1]])


def test_prototypes_tf_matches_numpy_on_non_square_shapes():
  problem = testing.random_problem(3, 4, 2, 5, 7, seed=3)
  model = prototypes.Prototypes(prototypes.PrototypesConfig(embedding_dim=7))
  out = tf.function(lambda p: model(p, training=False))(problem)
  np.testing.assert_allclose(out.val_logits.numpy(),
                             prototypes.ncm_logits_numpy(problem.tr_input, problem.val_input),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.val_accuracy.numpy(), prototypes.ncm_accuracy(problem))
  assert out.latents.shape == (3, 4, 2, 7) and out.adapted_latents.shape == (3, 4, 1, 7)


def test_prototypes_cannot_be_meta_trained():
  model = prototypes.Prototypes(prototypes.PrototypesConfig(embedding_dim=7))
  problem = testing.random_problem(1, 2, 1, 1, 7)
  assert model.meta_variables == []
  with pytest.raises(ValueError, match="nothing to|no parameters"):
    model(problem, training=True)
  with pytest.raises(ValueError, match="explicitly"):
    model(problem, training=None)


# ----------------------------------------------------------------------------
# Meta-SGD.
# ----------------------------------------------------------------------------


def _metasgd(d, n, steps, lr=1.0, dtype="float64", dropout=0.0):
  return metasgd.MetaSGD(metasgd.MetaSGDConfig(embedding_dim=d, num_classes=n,
                                               num_inner_steps=steps, inner_lr_init=lr,
                                               dropout_rate=dropout, dtype=dtype))


def test_metasgd_one_step_by_hand():
  # 2-way 1-shot, x_0 = (1, 0), x_1 = (0, 1), theta_0 = 0, alpha = 2. With the
  # bias feature x' = (x, 1); at theta = 0 both classes have p = 1/2, so the
  # summed loss's gradient for row c is sum_i (1/2 - [y_i = c]) x'_i:
  #   row 0: -1/2 (1, 0, 1) + 1/2 (0, 1, 1) = (-1/2, 1/2, 0), row 1 the opposite.
  # theta' = -2 grad: W'_0 = (1, -1), W'_1 = (-1, 1), biases 0. The query (1, 0)
  # of class 0 gets logits (1, -1): loss log(1 + e^-2) = 0.126928.
  model = _metasgd(2, 2, steps=1, lr=2.0)
  problem = _problem([[[1.0, 0.0]], [[0.0, 1.0]]], [[[1.0, 0.0]], [[0.0, 1.0]]])
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
  problem = problem._replace(val_input=np.repeat(problem.tr_input, 4, axis=2) + 0.1 * problem.val_input)
  model = _metasgd(8, 3, steps=1, lr=0.5, dtype="float32")
  config = OuterConfig(outer_lr=0.05, gradient_threshold=0, gradient_norm_threshold=0,
                       jit_compile=False)
  step = outer.make_train_step(model, outer.make_optimizer(model, config), config)
  losses = [float(step(problem, tf.constant([0, i])).val_loss) for i in range(30)]
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(tf.reduce_mean(model.inner_lr)) > 0.5  # alpha grew


# ----------------------------------------------------------------------------
# Through the trainer (--model).
# ----------------------------------------------------------------------------


D = 16
SYNTH = synthetic.SyntheticConfig(num_train_classes=10, num_val_classes=6, num_test_classes=6,
                                  images_per_class=12, embedding_dim=D, signal_dim=6,
                                  nuisance_dim=2, nuisance_scale=0.5, seed=2)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("embeddings"))
  synthetic.generate(SYNTH, path, num_eval_tasks=20)
  return path


def _config(path, checkpoint_path, model_name):
  return trainer.RunConfig(
      model=ModelConfig(embedding_dim=D, num_latents=4, inner_unroll_length=1,
                        finetuning_unroll_length=1, finetuning_lr_init=2.0, dropout_rate=0.0),
      data=DataConfig(data_path=path, dataset_name="synthetic", num_classes=5,
                      num_tr_examples_per_class=1, num_val_examples_per_class=3),
      outer=OuterConfig(metatrain_batch_size=4, num_steps_limit=20, checkpoint_steps=10,
                        num_metavalid_tasks=20, num_metatest_tasks=50, outer_lr=1e-2,
                        checkpoint_path=str(checkpoint_path), seed=1, jit_compile=False),
      summary_steps=10, progress=False, model_name=model_name)


def test_trainer_prototypes_evaluates_the_nearest_class_mean_without_training(data_path, tmp_path):
  config = _config(data_path, tmp_path / "proto", "prototypes")
  results = trainer.train(config)
  # The same tasks, by the NumPy rule: the same mean accuracy.
  split = load_split(config.data, "test", D)
  v = episodes.num_eval_val_examples(split, 1)
  sampler = episodes.EpisodeSampler(split, 5, 1, v, seed=1, stream="test")
  expected = prototypes.ncm_accuracy(sampler.sample_tasks(0, 50))
  assert results["model_name"] == "prototypes" and results["num_tasks"] == 50
  np.testing.assert_allclose(results["mean_accuracy"], expected.mean(), rtol=1e-6)
  assert os.path.isfile(tmp_path / "proto" / "results_val.json")
  assert not os.path.exists(tmp_path / "proto" / "ckpt")


def test_trainer_metasgd_trains_checkpoints_and_evaluates(data_path, tmp_path):
  config = _config(data_path, tmp_path / "msgd", "metasgd")
  results = trainer.train(config)
  assert results["model_name"] == "metasgd" and results["checkpoint_step"] in (10, 20)
  assert results["mean_accuracy"] > 0.5  # chance is 0.2
  with open(tmp_path / "msgd" / "config.json") as f:
    assert json.load(f)["model_name"] == "metasgd"
  # The checkpoint holds Meta-SGD's variables, and a LEO run may not resume it.
  reader = tf.train.load_checkpoint(str(tmp_path / "msgd" / "ckpt"))
  names = reader.get_variable_to_shape_map()
  assert any(n.startswith("model/initial_weights") for n in names)
  with pytest.raises(ValueError, match="model_name: 'metasgd' -> 'leo'"):
    trainer.train(_config(data_path, tmp_path / "msgd", "leo"))
