"""leo_tf.reproduce, stage 3 of appendix B.7: seeds trained on train + val, resumed, gathered.

In-process on a tiny synthetic set: a first process trains one seed of two (--seeds), the
study's call trains the other and skips the first, results.json agrees with each seed's
results_test.json (mean and sd over seeds recomputed with NumPy), and a seed whose
meta-test was interrupted after early stopping is meta-tested without more training.
"""

import dataclasses
import json
import os

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from leo_tf import command_line  # pylint: disable=unused-import  (defines the training flags)
from leo_tf import reproduce
from leo_tf.classification import experiment
from leo_tf.core.config import DataConfig, ModelConfig, OuterConfig
from leo_tf.data import synthetic
from leo_tf.regression import experiment as regression_experiment

D = 16
SYNTH = synthetic.SyntheticConfig(num_train_classes=10, num_val_classes=6, num_test_classes=6,
                                  images_per_class=12, embedding_dim=D, signal_dim=6,
                                  nuisance_dim=2, nuisance_scale=0.5, seed=2)
TASKS = 40  # meta-test tasks per seed


def _run_config(data_path, checkpoint_path, **outer):
  outer_config = dict(metatrain_batch_size=4, num_steps_limit=12, checkpoint_steps=2,
                      num_metavalid_tasks=10, num_metatest_tasks=7, outer_lr=1e-2,
                      early_stopping_patience=1, checkpoint_path=str(checkpoint_path), seed=3,
                      jit_compile=False)
  outer_config.update(outer)
  return experiment.RunConfig(
      model=ModelConfig(embedding_dim=D, num_latents=4, inner_unroll_length=1,
                        finetuning_unroll_length=0),
      data=DataConfig(data_path=data_path, dataset_name="synthetic", num_classes=5,
                      num_tr_examples_per_class=1, num_val_examples_per_class=3),
      outer=OuterConfig(**outer_config), summary_steps=2, progress=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """Two seeds: seed 3 alone (as another process would), then the study's call; then a seed
  that stopped early loses its results (as if killed during its meta-test) and the call is
  repeated."""
  data_path = str(tmp_path_factory.mktemp("embeddings"))
  synthetic.generate(SYNTH, data_path, num_eval_tasks=10)
  root = tmp_path_factory.mktemp("runs")
  config = reproduce.Stage3Config(run=_run_config(data_path, root), num_seeds=2,
                                  num_metatest_tasks=TASKS)
  seen = {"first": reproduce.run(dataclasses.replace(config, seeds=(3,)))}
  seen["results_after_first"] = os.path.exists(os.path.join(root, "stage3",
                                                            reproduce.RESULTS_FILE))
  seen["seed_4_after_first"] = os.path.exists(os.path.join(root, "stage3", "seed_4"))
  seed_3 = os.path.join(root, "stage3", "seed_3")
  files = [os.path.join(seed_3, name) for name in (reproduce.SEED_FILE, "results_test.json")]
  stamps = [os.stat(name).st_mtime_ns for name in files]
  seen["summary"] = reproduce.run(config)
  seen["seed_3_untouched"] = [os.stat(name).st_mtime_ns for name in files] == stamps
  # The interrupted meta-test of a seed that stopped early.
  latest = {s: tf.train.latest_checkpoint(os.path.join(root, "stage3", f"seed_{s}", "ckpt"))
            for s in (3, 4)}
  stopped = [s for s in (3, 4) if not latest[s].endswith("ckpt-12")]
  assert stopped, "the fixture needs a seed that stops early, before its 12 steps"
  folder = os.path.join(root, "stage3", f"seed_{stopped[0]}")
  seen["stopped"] = stopped[0]
  seen["latest"] = latest[stopped[0]]
  os.remove(os.path.join(folder, reproduce.SEED_FILE))
  os.remove(os.path.join(folder, "results_test.json"))
  seen["again"] = reproduce.run(config)
  seen["latest_again"] = tf.train.latest_checkpoint(os.path.join(folder, "ckpt"))
  return config, seen


def test_a_subset_leaves_the_study_incomplete_and_writes_no_results(study):
  config, seen = study
  assert seen["first"] == {"complete": False, "finished": [3], "missing": [4]}
  assert not seen["results_after_first"]
  assert not seen["seed_4_after_first"]  # left to another process
  record = reproduce.finished_seed(reproduce.seed_config(config, 3))
  assert record["seed"] == 3 and record["settings"]["data"]["train_on_val"] is True
  assert record["results"]["num_tasks"] == TASKS


def test_the_study_skips_the_finished_seed_and_gathers_both(study):
  config, seen = study
  assert seen["seed_3_untouched"]  # seed 3 was neither trained nor meta-tested again
  with open(os.path.join(config.folder, reproduce.RESULTS_FILE)) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(seen["again"]))
  assert seen["again"]["per_seed"] == seen["summary"]["per_seed"]
  assert written["seeds"] == [3, 4] and written["num_metatest_tasks"] == TASKS
  per_seed = []
  for seed in (3, 4):
    folder = os.path.join(config.folder, f"seed_{seed}")
    with open(os.path.join(folder, "results_test.json")) as f:
      results = json.load(f)
    with open(os.path.join(folder, "config.json")) as f:
      run_config = json.load(f)
    # Each seed is an ordinary run folder: its own seed, train + val, the stage-3 meta-test.
    assert run_config["outer"]["seed"] == seed and run_config["data"]["train_on_val"] is True
    assert results["num_tasks"] == TASKS and results["split"] == "test"
    assert os.path.isdir(os.path.join(folder, "train")) and os.path.isdir(os.path.join(folder,
                                                                                      "best"))
    per_seed.append(results)
  means = np.array([r["mean_accuracy"] for r in per_seed])
  assert means[0] != means[1]  # two different runs
  over = written["over_seeds"]["leo"]
  np.testing.assert_allclose(over["mean"], np.mean(means), rtol=1e-12)
  np.testing.assert_allclose(over["sd"], np.std(means, ddof=1), rtol=1e-12)
  for row, results in zip(written["per_seed"], per_seed):
    assert row["scores"]["leo"] == {"mean": results["mean_accuracy"], "ci95": results["ci95"]}
    assert row["checkpoint_step"] == results["checkpoint_step"]
  assert written["settings"]["data"]["train_on_val"] is True
  assert "seed" not in written["settings"]["outer"]
  table = written["table"]
  assert (f"| 3 | {100 * means[0]:.2f} ± {100 * per_seed[0]['ci95']:.2f} |") in table
  assert (f"| mean ± sd over 2 seeds | {100 * np.mean(means):.2f} ± "
          f"{100 * np.std(means, ddof=1):.2f} |") in table
  assert "meta-trained on the train + val classes" in table and f"{TASKS} meta-test" in table


def test_a_seed_stopped_early_and_interrupted_in_its_meta_test_is_only_meta_tested(study):
  _, seen = study
  assert seen["latest_again"] == seen["latest"]  # no more steps, no new checkpoint
  index = [3, 4].index(seen["stopped"])
  assert seen["again"]["per_seed"][index] == seen["summary"]["per_seed"][index]


def test_changed_settings_make_a_finished_seed_unfinished(study):
  config, _ = study
  same = reproduce.seed_config(config, 3)
  assert reproduce.finished_seed(dataclasses.replace(same, progress=True, summary_steps=7))
  longer = dataclasses.replace(same, outer=dataclasses.replace(same.outer, num_steps_limit=9))
  assert reproduce.finished_seed(longer) is None


def test_bad_stage3_settings_are_refused_with_the_fix(tmp_path):
  run = _run_config(str(tmp_path), tmp_path)
  with pytest.raises(ValueError, match=r"^num_seeds must be >= 1, got 0\.$"):
    reproduce.Stage3Config(run=run, num_seeds=0)
  with pytest.raises(ValueError, match=r"^stage3_metatest_tasks must be >= 1, got 0\.$"):
    reproduce.Stage3Config(run=run, num_metatest_tasks=0)
  with pytest.raises(ValueError) as info:
    reproduce.Stage3Config(run=run, num_seeds=2, seeds=(3, 9))
  assert str(info.value) == ("seeds must be distinct seeds of the study, [3, 4] (--seed=3 and "
                             "the next, --num_seeds=2); got [3, 9].")
  with pytest.raises(ValueError, match="distinct"):
    reproduce.Stage3Config(run=run, num_seeds=2, seeds=(3, 3))
  assert not os.listdir(tmp_path)  # nothing written


@pytest.fixture
def parsed_flags():
  """Parses command lines into absl's FLAGS (with stage 3's flags), then resets them."""
  reproduce.define_flags()

  def parse(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["leo_tf.reproduce", *args])
    return flags.FLAGS

  yield parse
  flags.FLAGS.unparse_flags()


def test_flags_that_contradict_stage_3_are_refused(parsed_flags):
  parsed_flags("--num_seeds=3", "--seeds=1,2")
  config = reproduce.config_from_flags(command_line.config_from_flags())
  assert (config.num_seeds, config.seeds, config.num_metatest_tasks) == (3, (1, 2), 50_000)
  assert reproduce.seed_config(config, 2).data.train_on_val  # set by stage 3 itself
  assert reproduce.seed_config(config, 2).outer.checkpoint_path == os.path.join(
      "runs", "leo", "stage3", "seed_2")
  parsed_flags("--train_on_val=false")
  with pytest.raises(ValueError, match="^--train_on_val=false contradicts stage 3"):
    reproduce.config_from_flags(command_line.config_from_flags())
  for bad, start in (("--evaluation_mode", "--evaluation_mode: stage 3 trains"),
                     ("--results_dir=/tmp/x", "--results_dir: each seed's results"),
                     ("--export_dir=/tmp/m", "--export_dir: stage 3 exports nothing"),
                     ("--seeds=a", "seeds must be integers")):
    parsed_flags(bad)
    with pytest.raises(ValueError, match=f"^{start}"):
      reproduce.config_from_flags(command_line.config_from_flags())
  parsed_flags("--problem=regression", "--num_metatest_tasks=30", "--seed=0")
  config = reproduce.config_from_flags(command_line.regression_config_from_flags())
  assert config.num_metatest_tasks == 30  # regression keeps the flagfile's held-out tasks


def test_regression_seeds_pass_over_the_held_out_seed_and_gather_mse(tmp_path, monkeypatch):
  # Regression's training is regression.experiment.train, tested in tests/regression (a real
  # one here would cost ~20 s of tracing per seed); here stage 3's part: which runs it asks
  # for and how it gathers their MSE (lower is better).
  run = regression_experiment.RegressionRunConfig(
      outer=OuterConfig(checkpoint_path=str(tmp_path), seed=0, num_metatest_tasks=30),
      eval_seed=1, progress=False)
  config = reproduce.Stage3Config(run=run, num_seeds=3, num_metatest_tasks=30)
  assert reproduce.study_seeds(config) == [0, 2, 3]  # 1 draws the held-out tasks
  mse = {0: (1.5, 0.2), 2: (1.1, 0.1), 3: (1.3, 0.3)}  # seed -> (mean, ci95)
  asked = []

  def fake_train(seed_run):
    asked.append(seed_run)
    o = seed_run.outer
    return {"num_tasks": o.num_metatest_tasks,
            "results_file": os.path.join(o.checkpoint_path, "results_test.json"),
            **{name: {"mse": {"mean": mse[o.seed][0] + (name == "maml"),
                              "ci95": mse[o.seed][1]}, "checkpoint_step": 2}
               for name in ("leo", "maml")}}

  monkeypatch.setattr(regression_experiment, "train", fake_train)
  summary = reproduce.run(config)
  assert [(r.outer.seed, r.outer.checkpoint_path, r.outer.num_metatest_tasks) for r in asked] == [
      (s, os.path.join(tmp_path, "stage3", f"seed_{s}"), 30) for s in (0, 2, 3)]
  assert all(dataclasses.replace(r, outer=run.outer) == run for r in asked)  # nothing else changed
  assert summary["metric"] == "mse" and not summary["higher_is_better"]
  means = np.array([mse[s][0] for s in (0, 2, 3)])
  for name, offset in (("leo", 0.0), ("maml", 1.0)):
    np.testing.assert_allclose(summary["over_seeds"][name]["mean"], np.mean(means) + offset,
                               rtol=1e-12)
    np.testing.assert_allclose(summary["over_seeds"][name]["sd"], np.std(means, ddof=1),
                               rtol=1e-12)
  table = summary["table"]
  assert "| seed | leo meta-test MSE (lower is better) | maml meta-test MSE" in table
  assert "| 2 | 1.1000 ± 0.1000 | 2.1000 ± 0.1000 |" in table
  assert (f"| mean ± sd over 3 seeds | {np.mean(means):.4f} ± {np.std(means, ddof=1):.4f} | "
          f"{np.mean(means) + 1:.4f} ± {np.std(means, ddof=1):.4f} |") in table
