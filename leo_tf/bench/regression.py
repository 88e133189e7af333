r"""Benchmark: LEO against MAML on sines and lines, trained here on the CPU.

    nice -n 10 python -m leo_tf.bench.regression                 # sines.flags settings
    nice -n 10 python -m leo_tf.bench.regression --flagfile=sines.flags --num_steps_limit=6000

Trains both models from scratch with the flagfile's settings (the same code
path as `python -m leo_tf.train --flagfile=sines.flags`) in a fresh folder,
evaluates them on the same held-out tasks, and prints a table and one JSON
line per model plus one for the goals of the regression issue:

  - LEO's MSE at least 20% below MAML's, 95% intervals not overlapping;
  - LEO's 90% band coverage between 80% and 95%;
  - training (both models) in under 20 minutes.

Wall times depend on what else the machine runs: the load average before and
after is printed with them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags

from leo_tf import command_line  # defines the training flags
from leo_tf.outer import progress

flags.DEFINE_string("bench_dir", None,
                    "Fresh folder for the benchmark run (default runs/bench_sines/<UTC time>); "
                    "replaces --checkpoint_path.")

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(command_line)  # --help lists the training flags
MSE_RATIO_GOAL = 0.8  # LEO's MSE at most 80% of MAML's
COVERAGE_GOAL = (0.80, 0.95)
TRAIN_SECONDS_GOAL = 20 * 60


def summarise(results: dict[str, Any], wall_seconds: float) -> list[dict[str, Any]]:
  """One row per model and one of goals, from regression.experiment.train's results."""
  rows = []
  for name in ("leo", "maml"):
    if name not in results:
      continue
    entry, training = results[name], results["training"].get(name, {})
    row = {"model": name, "mse": entry["mse"]["mean"], "mse_ci95": entry["mse"]["ci95"],
           "num_tasks": results["num_tasks"], "train_seconds": training.get("train_seconds"),
           "train_cpu_seconds": training.get("train_cpu_seconds"),
           "steps": training.get("final_step"), "nan_fallbacks": training.get("nan_fallbacks"),
           "eval_seconds": entry["eval_seconds"]}
    if name == "leo":
      row.update(coverage90=entry["coverage90"]["mean"],
                 coverage90_ci95=entry["coverage90"]["ci95"],
                 mse_means=entry["mse_means"]["mean"])
    rows.append(row)
  train_seconds = sum(r["train_seconds"] or 0.0 for r in rows)
  goals: dict[str, Any] = {"model": "goals", "train_seconds_total": train_seconds,
                           "train_cpu_seconds_total": sum(r["train_cpu_seconds"] or 0.0
                                                          for r in rows),
                           "wall_seconds": wall_seconds,
                           "train_under_20_min": train_seconds < TRAIN_SECONDS_GOAL}
  if "leo_vs_maml" in results:
    ratio = results["leo_vs_maml"]["mse_ratio"]
    goals.update(mse_ratio=ratio, mse_20pct_below_maml=ratio <= MSE_RATIO_GOAL,
                 intervals_overlap=results["leo_vs_maml"]["intervals_overlap"])
  if "leo" in results:
    coverage = results["leo"]["coverage90"]["mean"]
    goals.update(coverage_in_80_95=COVERAGE_GOAL[0] <= coverage <= COVERAGE_GOAL[1])
  rows.append(goals)
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  """The model rows as a fixed-width table."""
  lines = [f"{'model':6} {'MSE (95% CI)':>20} {'90% coverage':>16} {'MSE means':>10} "
           f"{'steps':>7} {'train s':>8} {'CPU s':>7} {'eval s':>7}"]
  for r in rows:
    if r["model"] == "goals":
      continue
    coverage = (f"{100 * r['coverage90']:.1f}% +- {100 * r['coverage90_ci95']:.1f}"
                if "coverage90" in r else "-")
    means = f"{r['mse_means']:.4f}" if "mse_means" in r else "-"
    lines.append(f"{r['model']:6} {r['mse']:>10.4f} +- {r['mse_ci95']:<6.4f} {coverage:>16} "
                 f"{means:>10} {r['steps']:>7} {r['train_seconds']:>8.0f} "
                 f"{r['train_cpu_seconds']:>7.0f} {r['eval_seconds']:>7.0f}")
  return "\n".join(lines)


def main(argv):
  progress.start_command(argv, "leo_tf.bench.regression")
  if FLAGS.problem != "regression":
    raise app.UsageError("leo_tf.bench.regression benchmarks --problem=regression (use sines.flags).")
  from leo_tf.regression import experiment  # pylint: disable=g-import-not-at-top
  config = command_line.regression_config_from_flags()
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  path = FLAGS.bench_dir or os.path.join("runs", "bench_sines", stamp)
  if os.path.exists(os.path.join(path, "config.json")):
    raise app.UsageError(f"{path} already holds a run; the benchmark trains from scratch: "
                         "pass a new --bench_dir.")
  config = dataclasses.replace(config, outer=dataclasses.replace(config.outer,
                                                                 checkpoint_path=path))
  load_before = os.getloadavg()
  print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f}, run folder {path}",
        flush=True)
  t0 = time.time()
  results = experiment.train(config)
  wall = time.time() - t0
  rows = summarise(results, wall)
  load_after = os.getloadavg()
  rows[-1].update(load_average_before=load_before[0], load_average_after=load_after[0],
                  cpus=os.cpu_count(), figure=results.get("figure"),
                  results_file=results["results_file"])
  print()
  print(format_table(rows))
  goals = rows[-1]
  print(f"\nLEO/MAML MSE ratio {goals.get('mse_ratio', float('nan')):.3f} (goal <= "
        f"{MSE_RATIO_GOAL}), intervals overlap: {goals.get('intervals_overlap')}; coverage in "
        f"[80%, 95%]: {goals.get('coverage_in_80_95')}; training {goals['train_seconds_total']:.0f}"
        f" s wall, {goals['train_cpu_seconds_total']:.0f} CPU s (goal < {TRAIN_SECONDS_GOAL} s "
        f"on {os.cpu_count()} cores); whole benchmark {wall:.0f} s; load average "
        f"{load_before[0]:.2f} -> {load_after[0]:.2f}")
  for row in rows:
    print(json.dumps(row, sort_keys=True))


if __name__ == "__main__":
  if not any(a.startswith("--flagfile") for a in sys.argv[1:]):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.argv.insert(1, f"--flagfile={os.path.join(repo, 'sines.flags')}")
  app.run(main, flags_parser=progress.flags_parser("leo_tf.bench.regression"))
