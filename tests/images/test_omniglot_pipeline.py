"""Tests for leo_tf.images.omniglot_pipeline: its table and goals, and a reduced run on real drawings."""

import dataclasses
import os

import pytest

from leo_tf.images import omniglot_pipeline
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



@needs_data
def test_reduced_pipeline_reaches_a_floor_a_broken_one_cannot(tmp_path):
  # Stage 1 on a subset, LEO 5-way 1-shot briefly, then figure 4 on 100 tasks.
  # About a minute on 2 idle cores (stage 1: two epochs over 24,000 images).
  config = omniglot_pipeline.quick_config(DATA, str(tmp_path), flagfile_dir=REPO)
  config = dataclasses.replace(config, figure_tasks=100, figure_settings=("5way1shot",))
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
  with open(tmp_path / "runs" / "results.md") as f:
    assert "LEO, ours" in f.read()

