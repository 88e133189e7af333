"""Tests for leo_tf.outer.learner: every learner meets the contract; scores judge by hand."""

import math

import pytest

from leo_tf.classification import metasgd
from leo_tf.classification import prototypes
from leo_tf.classification.leo import LEO
from leo_tf.core.config import ModelConfig
from leo_tf.outer import learner
from leo_tf.regression import leo as regression_leo
from leo_tf.regression import maml


def test_every_learner_meets_the_contract():
  learners = [
      LEO(ModelConfig(embedding_dim=8, num_latents=2)),
      metasgd.MetaSGD(metasgd.MetaSGDConfig(embedding_dim=8, num_classes=3)),
      prototypes.Prototypes(prototypes.PrototypesConfig(embedding_dim=8)),
      regression_leo.LEORegression(regression_leo.RegressionConfig(
          hidden_units=(4,), num_latents=2, network_units=4)),
      maml.MAML(maml.MAMLConfig(hidden_units=(4,))),
  ]
  for model in learners:
    assert isinstance(model, learner.MetaLearner), type(model).__name__
  assert [m.score for m in learners] == [learner.ACCURACY] * 3 + [learner.MSE] * 2
  assert [sorted(m.learned_rates) for m in learners] == [
      ["finetuning_lr", "inner_lr"], ["inner_lr"], [], ["inner_lr"], []]


def test_scores_judge_improvement_by_their_direction():
  accuracy, mse = learner.ACCURACY, learner.MSE
  assert accuracy.improves(0.5, accuracy.worst) and accuracy.improves(0.61, 0.6)
  assert not accuracy.improves(0.6, 0.6) and not accuracy.improves(0.59, 0.6)
  assert mse.improves(1e6, mse.worst) and mse.improves(0.9, 1.0)
  assert not mse.improves(1.0, 1.0) and not mse.improves(1.1, 1.0)
  for score in (accuracy, mse):  # a diverged evaluation never becomes the best
    assert not score.improves(math.nan, score.worst)
    assert not score.improves(math.inf, score.worst) and not score.improves(-math.inf, 0.0)
  assert accuracy.format(0.99456, 0.00054) == "99.46% +- 0.05%"
  assert mse.format(1.31530, 0.28680) == "1.3153 +- 0.2868"


def test_the_training_flag_must_be_an_explicit_bool():
  assert learner.check_training_flag(True) is True
  assert learner.check_training_flag(False) is False
  for wrong in (None, 1, "yes"):
    with pytest.raises(ValueError, match="Pass training=True or training=False explicitly"):
      learner.check_training_flag(wrong)
