"""leo_tf.classification.prototypes: the nearest class mean baseline on the same features."""

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.classification import prototypes
from leo_tf.data import random_problems as testing


def test_prototypes_by_hand(one_task):
  # Class means (1, 0) and (0, 1); query (0.6, 0.5) is nearer to (1, 0)
  # (0.16 + 0.25 = 0.41 vs 0.36 + 0.25 = 0.61), query (0.4, 0.5) to (0, 1).
  problem = one_task([[[1.0, 0.5], [1.0, -0.5]], [[0.0, 1.0], [0.0, 1.0]]],
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
