"""regression.leo: the generator's shapes, sampling and evaluation modes, refusals, the
meta-gradient, its bounded Gaussians, and sampled predictions with XLA on and off."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core import distributions
from leo_tf.regression import evaluation
from leo_tf.regression import leo
from leo_tf.regression import mlp


def test_generated_parameter_count():
  model = leo.LEORegression(leo.RegressionConfig())
  assert model.num_params == 1761
  assert model.decoder.kernels[-1].shape == (32, 2 * 1761)  # mean and scale per parameter
  assert [tuple(k.shape) for k in model.encoder.kernels] == [(2, 32), (32, 32), (32, 32)]
  assert [tuple(k.shape) for k in model.relation_network.kernels] == [(64, 32), (32, 32),
                                                                      (32, 32)]


def test_bounded_gaussian():
  # The bounded Gaussians of the regression LEO (sigma^d below max_params_stddev) are
  # core.distributions.gaussian_from_params with max_stddev.
  u = tf.constant([[-3.0, -0.5, 0.0, 0.5, 5.0, 50.0]], tf.float64)
  params = tf.concat([tf.zeros_like(u), u], axis=-1)
  bounded = distributions.gaussian_from_params(params, stddev_offset=0.1, max_stddev=1.0)
  plain = distributions.gaussian_from_params(params, 0.1)
  # Identical at and below u = 0 (u = 0 gives the offset, 0.1); below 1.0 always.
  np.testing.assert_allclose(bounded.scale.numpy()[0, :3], plain.scale.numpy()[0, :3])
  np.testing.assert_allclose(bounded.scale.numpy()[0, 2], 0.1)
  assert np.all(bounded.scale.numpy() < 1.0) and bounded.scale.numpy()[0, -1] > 0.999
  with pytest.raises(ValueError, match="max_stddev"):
    distributions.gaussian_from_params(params, stddev_offset=0.5, max_stddev=0.5)


def test_leo_shapes_and_modes(small_config, make_tasks):
  model = leo.LEORegression(small_config, seed=1)
  tasks = make_tasks(3, num_val=7)
  seed = tf.constant([1, 2])
  out = model(tasks, training=True, seed=seed, num_samples=4)
  p = mlp.num_params(small_config.hidden_units)
  assert out.val_predictions.shape == (3, 4, 7, 1)
  assert out.params.shape == (3, 4, p) and out.latents.shape == (3, 4, 3)
  assert out.val_loss.shape == out.kl.shape == out.encoder_penalty.shape == (3,)
  assert np.all(out.kl.numpy() != 0) and np.all(np.isfinite(out.val_loss.numpy()))
  # The query loss is the MSE of the sampled predictions against the noisy targets.
  want = np.mean((out.val_predictions.numpy() - tasks.val_output[:, None]) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(out.val_loss.numpy(), want, rtol=1e-5)
  evaluation_out = model(tasks, training=False, seed=seed, num_samples=4)
  np.testing.assert_array_equal(evaluation_out.kl.numpy(), 0.0)  # no KL in evaluation
  # Samples differ from each other; the means path is one deterministic function.
  assert np.std(evaluation_out.val_predictions.numpy(), axis=1).mean() > 0
  means = model(tasks, training=False, use_means=True)
  assert means.val_predictions.shape == (3, 1, 7, 1)
  graph = tf.function(lambda t: model(t, training=False, use_means=True).val_predictions)
  np.testing.assert_allclose(graph(tasks).numpy(), means.val_predictions.numpy(), rtol=1e-5,
                             atol=1e-6)


def test_leo_refuses_missing_mode_or_seed_and_bad_tasks(small_config, make_tasks):
  model = leo.LEORegression(small_config)
  tasks = make_tasks(2)
  with pytest.raises(ValueError, match="training=True or training=False"):
    model(tasks, training=None, seed=tf.constant([0, 0]))
  with pytest.raises(ValueError, match="pass seed"):
    model(tasks, training=False)
  bad = tasks._replace(tr_output=tasks.tr_output[:, :3])
  with pytest.raises(ValueError, match="tr_output"):
    model(bad, training=False, use_means=True)
  with pytest.raises(ValueError, match="num_latents"):
    leo.RegressionConfig(num_latents=0)


def test_leo_meta_gradient_reaches_every_variable(small_config, make_tasks):
  model = leo.LEORegression(small_config, seed=2)
  tasks = make_tasks(2)
  with tf.GradientTape() as tape:
    loss = model.meta_loss(model(tasks, training=True, seed=tf.constant([3, 4])))
  grads = tape.gradient(loss.total, model.meta_variables)
  names = [v.name for v in model.meta_variables]
  for name, g in zip(names, grads):
    if "finetuning_lr" in name:
      assert g is None  # no fine-tuning steps in the small config
    else:
      assert g is not None and np.all(np.isfinite(g.numpy())), name
      assert np.abs(g.numpy()).max() > 0, name


def test_predictions_xla_equal_graph_for_a_seed(small_config, make_tasks):
  # The draws are made outside the XLA cluster, so both give the same samples.
  model = leo.LEORegression(dataclasses.replace(small_config, inner_unroll_length=1), seed=5)
  tasks = make_tasks(2, num_val=4)
  seed = tf.constant([9, 1])
  graph = evaluation.make_predict_step(model, 3, jit_compile=False)(tasks, seed)
  xla = evaluation.make_predict_step(model, 3, jit_compile=True)(tasks, seed)
  eager = model(tasks, training=False, seed=seed, num_samples=3).val_predictions
  np.testing.assert_allclose(xla.numpy(), graph.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(eager.numpy(), graph.numpy(), rtol=1e-4, atol=1e-5)
