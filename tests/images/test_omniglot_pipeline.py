"""Tests for leo_tf.images.omniglot_pipeline: its table and goals, and a reduced run on real drawings."""

import dataclasses
import os

from absl import flags
import pytest
from tensorflow.core.protobuf import saved_model_pb2

from leo_tf.images import omniglot_pipeline
from leo_tf.serving import publish
from tests.paths import REPO

DATA = os.path.join(REPO, "..", "shared", "data", "omniglot")
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "index.csv")),
                                reason="the shared Omniglot folder is not here")


def test_results_table_and_goals():
  def result(setting, model, acc, ci):
    return {"setting": setting, "model": model, "ablation": "leo", "mean_accuracy": acc,
            "ci95": ci}
  results = [result("20way1shot", "leo", 0.976, 0.001), result("20way1shot", "metasgd", 0.97,
                                                                0.002),
             result("20way5shot", "leo", 0.99, 0.001)]
  table = omniglot_pipeline.results_table(results)
  assert "| LEO, ours (conv4 features) | not run | not run | 97.60 ± 0.10 | 99.00 ± 0.10 |" in table
  assert "| Relation Network (Sung et al. 2018) | 99.6 | 99.8 | 97.6 | 99.1 |" in table
  goals = omniglot_pipeline.goals_report(results)
  assert goals[0] == "LEO >= 97.5% on 20way1shot: met (97.60%)"
  assert goals[1] == "LEO >= 99.3% on 20way5shot: MISSED (99.00%)"
  assert goals[2].startswith("LEO above Meta-SGD on 20way1shot, disjoint 95% intervals: met")


def test_stage3_table_gives_mean_and_sd_over_seeds():
  def study(setting, model, mean, sd):
    return {"setting": setting, "model": model, "num_seeds": 5, "num_metatest_tasks": 50_000,
            "over_seeds": {model: {"mean": mean, "sd": sd}}}
  table = omniglot_pipeline.stage3_table([study("20way1shot", "leo", 0.9512, 0.0013),
                                          study("5way1shot", "prototypes", 0.98, 0.0)])
  assert ("| LEO, ours | not run | not run | 95.12 ± 0.13 (5 seeds, 50,000 tasks each) | not run |"
          in table)
  assert "| Nearest class mean, ours | 98.00 ± 0.00 (5 seeds, 50,000 tasks each) |" in table
  assert "Meta-SGD" not in table


def _parsed(*args):
  """The pipeline's flags parsed from `args` into a fresh FlagValues."""
  flag_values = flags.FlagValues()
  omniglot_pipeline.define_flags(flag_values)
  flag_values(["omniglot_pipeline", *args])
  return flag_values


def test_quick_flag_gives_quick_config_under_output_dir():
  config = omniglot_pipeline.config_from_flags(
      _parsed("--quick", "--data_dir=/d/omniglot", "--output_dir=/tmp/q", "--flagfile_dir=/r"))
  assert config == omniglot_pipeline.quick_config("/d/omniglot", "/tmp/q", flagfile_dir="/r")
  assert (config.embeddings_path, config.output_dir) == ("/tmp/q/embeddings", "/tmp/q/runs")
  assert (config.settings, config.models, config.figure_settings, config.figure_tasks) == (
      ("5way1shot",), ("leo",), ("5way1shot",), 100)
  assert config.pretrain.epochs == 2 and config.pretrain.max_classes == 1200
  assert config.pretrain.output_path == "/tmp/q/embeddings"
  # Without --output_dir it keeps away from the full run's runs/omniglot.
  default = omniglot_pipeline.config_from_flags(_parsed("--quick", "--overwrite_embeddings"))
  assert default == dataclasses.replace(
      omniglot_pipeline.quick_config("../shared/data/omniglot", "runs/omniglot_quick"),
      overwrite_embeddings=True)


def test_without_quick_flags_give_the_full_pipeline():
  config = omniglot_pipeline.config_from_flags(
      _parsed("--output_dir=/o", "--pretrain_epochs=3", "--settings=20way1shot",
              "--models=leo,metasgd", "--ablations=", "--extra_flags=--num_steps_limit=10"))
  assert config == omniglot_pipeline.PipelineConfig(
      output_dir="/o", pretrain=dataclasses.replace(omniglot_pipeline.OMNIGLOT_PRETRAIN, epochs=3),
      settings=("20way1shot",), models=("leo", "metasgd"), ablations=(),
      extra_flags=("--num_steps_limit=10",))
  assert omniglot_pipeline.config_from_flags(_parsed()) == omniglot_pipeline.PipelineConfig()


def test_quick_refuses_the_flags_it_sets_itself():
  with pytest.raises(ValueError) as info:
    omniglot_pipeline.config_from_flags(_parsed("--quick", "--settings=20way1shot",
                                                "--pretrain_epochs=5"))
  assert str(info.value) == ("--quick runs quick_config(), which sets --pretrain_epochs, "
                             "--settings itself; drop them, or drop --quick to choose them.")
  with pytest.raises(ValueError) as info:
    omniglot_pipeline.config_from_flags(_parsed("--quick", "--figure_tasks=0"))
  assert str(info.value) == ("--quick runs quick_config(), which sets --figure_tasks itself; "
                             "drop it, or drop --quick to choose it.")


@needs_data
def test_reduced_pipeline_reaches_a_floor_a_broken_one_cannot(tmp_path):
  # quick_config (--quick): stage 1 on a subset, LEO 5-way 1-shot briefly, then
  # figure 4 on 100 tasks. About a minute on 2 idle cores (stage 1: two epochs
  # over 24,000 images).
  config = omniglot_pipeline.quick_config(DATA, str(tmp_path), flagfile_dir=REPO)
  assert (config.figure_tasks, config.figure_settings) == (100, ("5way1shot",))
  summary = omniglot_pipeline.run(config)
  (result,) = summary["results"]
  assert result["setting"] == "5way1shot" and result["model"] == "leo"
  assert result["num_tasks"] == 500 and result["num_val_examples_per_class"] == 19
  # Chance is 20%; untrained features give about 60% (NCM); a working pipeline > 90%.
  assert result["mean_accuracy"] > 0.9, result
  assert summary["stage1"]["ncm"]["val"]["accuracy"] > summary["stage1"]["ncm"]["test"][
      "accuracy"] - 0.1
  (figure,) = summary["figures"]
  assert os.path.getsize(figure["figure"]) > 10_000
  assert figure["num_tasks"] == 100 and figure["accuracy_adapted"] > 0.9
  # Stage 3: LEO trained again on train + val for 2 seeds, gathered by leo_tf.reproduce.
  (study,) = summary["stage3"]
  assert study["seeds"] == [0, 1] and study["num_metatest_tasks"] == 200
  assert study["settings"]["data"]["train_on_val"] and study["over_seeds"]["leo"]["mean"] > 0.5
  with open(tmp_path / "runs" / "results.md") as f:
    markdown = f.read()
  assert "LEO, ours" in markdown and "Stage 3 (trained again" in markdown
  assert "| LEO, ours | " + f"{100 * study['over_seeds']['leo']['mean']:.2f} ± " in markdown
  _check_export(summary, tmp_path)


def _check_export(summary, work_dir):
  """The quick run's LEO is exported with the stage-1 backbone: the image signatures are there."""
  (version_dir,) = summary["exports"]
  assert version_dir == os.path.join(str(work_dir), "runs", "models", "omniglot_5way1shot", "1")
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  assert {"serving_default", "images", "image_bytes", "images_batched"} <= set(
      saved_model.meta_graphs[0].signature_def)
  front_end = publish.read_export_config(version_dir)["front_end"]
  assert front_end["convention"] == "omniglot"
  assert front_end["folder"] == os.path.join(str(work_dir), "embeddings", "omniglot")

