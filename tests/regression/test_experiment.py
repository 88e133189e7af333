"""regression.experiment: a short run of LEO and MAML lowers the held-out MSE and writes its
results, figure and configuration; a restart with other settings is refused; the sines
flagfile; summaries of a diverged run.
"""

import dataclasses
import json
import os

import pytest

from leo_tf.core.config import OuterConfig
from leo_tf.regression import evaluation
from leo_tf.regression import experiment
from leo_tf.regression import maml as maml_lib
from leo_tf.regression import tasks as tasks_lib


def _run_config(path, small_config, **overrides):
  outer = OuterConfig(metatrain_batch_size=8, num_steps_limit=40, outer_lr=3e-3,
                      gradient_threshold=0.0, gradient_norm_threshold=1.0,
                      checkpoint_path=str(path), checkpoint_steps=40, num_metavalid_tasks=20,
                      num_metatest_tasks=40, metavalid_batch_size=20, metatest_batch_size=40,
                      jit_compile=False)
  settings = dict(model=dataclasses.replace(small_config, hidden_units=(10, 10), num_latents=4),
                  maml=maml_lib.MAMLConfig(hidden_units=(10, 10), num_inner_steps=2),
                  outer=outer, maml_steps_ratio=1.5, maml_outer_lr=1e-2, num_eval_samples=10,
                  num_valid_samples=4, num_eval_points=15, summary_steps=20, progress=False)
  settings.update(overrides)
  return experiment.RegressionRunConfig(**settings)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_config):
  path = tmp_path_factory.mktemp("sines")
  config = _run_config(path, small_config)
  results = experiment.train(config)
  return config, results


def test_short_run_lowers_the_mse_and_writes_everything(trained_run):
  config, results = trained_run
  path = config.outer.checkpoint_path
  tasks, _ = tasks_lib.heldout_tasks(config.eval_seed, "test", 40, 15, config.tasks)
  # What the initial models score on the same held-out tasks.
  for name in ("leo", "maml"):
    initial = experiment.build_learner(name, config)
    predict = evaluation.make_predict_step(initial, 10 if name == "leo" else 1, False)
    samples = evaluation.predict_tasks(predict, tasks, 40, config.eval_seed)
    initial_mse = evaluation.mse_of_mean(samples, tasks.val_target).mean()
    assert results[name]["mse"]["mean"] < 0.8 * initial_mse, (name, results[name], initial_mse)
  assert 0.0 <= results["leo"]["coverage90"]["mean"] <= 1.0
  assert results["leo"]["nonfinite_tasks"] == 0
  assert results["training"]["leo"]["steps_run"] == 40
  # One limit for both: MAML trains maml_steps_ratio x num_steps_limit steps, and says so.
  assert results["training"]["maml"]["steps_run"] == 60
  assert (results["leo"]["steps_trained"], results["maml"]["steps_trained"]) == (40, 60)
  with open(os.path.join(path, "results_test.json")) as f:
    assert json.load(f)["leo_vs_maml"]["mse_ratio"] == results["leo_vs_maml"]["mse_ratio"]
  with open(os.path.join(path, "figure3.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert set(results["figure_tasks"]) == {"ambiguous", "sine", "line"}
  with open(os.path.join(path, "config.json")) as f:
    saved = json.load(f)
  assert saved["problem"] == "regression"
  assert experiment.RegressionRunConfig.from_dict(saved) == config
  # A restart with other settings is refused.
  other = dataclasses.replace(config, model=dataclasses.replace(config.model, kl_weight=0.5))
  with pytest.raises(ValueError, match="kl_weight"):
    experiment.train(other)


def test_maml_steps_follow_the_one_step_limit(tmp_path, small_config):
  config = _run_config(tmp_path, small_config, maml_steps_ratio=2.5)
  assert config.outer_config("leo").num_steps_limit == 40
  assert config.outer_config("maml").num_steps_limit == 100
  shorter = dataclasses.replace(config, outer=dataclasses.replace(config.outer, num_steps_limit=8))
  assert shorter.outer_config("maml").num_steps_limit == 20
  # A config.json written before the ratio (MAML's steps as a number) reads as that ratio.
  saved = json.loads(json.dumps(config.to_dict()))
  del saved["maml_steps_ratio"]
  saved["maml_num_steps_limit"] = 100
  assert experiment.RegressionRunConfig.from_dict(saved) == config
  with pytest.raises(ValueError, match="maml_steps_ratio must be > 0"):
    _run_config(tmp_path, small_config, maml_steps_ratio=0.0)

