"""Tests for leo_tf.bench.regression: its rows and goals from a run's results."""

from leo_tf.bench import regression


def _interval(mean, ci):
  return {"mean": mean, "ci95": ci, "sd": 0.0}


RESULTS = {
    "num_tasks": 1000,
    "leo": {"mse": _interval(1.0, 0.2), "coverage90": _interval(0.85, 0.01),
            "mse_means": _interval(1.1, 0.2), "eval_seconds": 40.0},
    "maml": {"mse": _interval(1.6, 0.2), "eval_seconds": 2.0},
    "leo_vs_maml": {"mse_ratio": 0.625, "intervals_overlap": False},
    "training": {"leo": {"train_seconds": 800.0, "train_cpu_seconds": 700.0, "final_step": 8000,
                         "nan_fallbacks": 0},
                 "maml": {"train_seconds": 100.0, "train_cpu_seconds": 110.0,
                          "final_step": 20000, "nan_fallbacks": 0}},
}


def test_rows_and_goals_from_the_results():
  leo, maml, goals = regression.summarise(RESULTS, wall_seconds=950.0)
  assert (leo["model"], leo["mse"], leo["steps"], leo["coverage90"]) == ("leo", 1.0, 8000, 0.85)
  assert (maml["model"], maml["steps"], "coverage90" in maml) == ("maml", 20000, False)
  assert goals["train_seconds_total"] == 900.0 and goals["train_cpu_seconds_total"] == 810.0
  assert goals["train_under_20_min"]  # 900 s < 1200 s
  assert goals["mse_20pct_below_maml"] and not goals["intervals_overlap"]  # 0.625 <= 0.8
  assert goals["coverage_in_80_95"]
  slow = dict(RESULTS, leo_vs_maml={"mse_ratio": 0.9, "intervals_overlap": True})
  assert not regression.summarise(slow, 0.0)[-1]["mse_20pct_below_maml"]
  table = regression.format_table([leo, maml, goals]).splitlines()
  assert len(table) == 3 and table[1].startswith("leo ") and "85.0% +- 1.0" in table[1]
