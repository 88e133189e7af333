r"""Throughput benchmark: `python -m leo_tf.bench`.

Times, after warm-up, on random L2-normalised embeddings with the model's real
configuration (D = 640, n_z = 64, 5 + 5 inner steps):
  - one meta-training step, 5-way 1-shot and 5-shot, meta-batch 12, 15 queries
    per class (5-shot also with --weight_sampling=class_mean: case *_classmean);
  - evaluation, 5-way 1-shot and 5-shot with every remaining query (599 / 595
    per class of 600 images), 200 tasks per batch, as classification.experiment evaluates
    LEO (classification.evaluation.SplitEvaluator; sampling the tasks included);
each with XLA on and off, and the episode pipeline alone (leo_tf.bench.data, run as a
subprocess after the model cases; `--nopipeline` skips it).

Every case runs in its own process so that its peak resident memory
(ru_maxrss) is its own. Prints one JSON line per case (case, tasks_per_s,
step_ms_median, step_ms_p10, step_ms_p90, peak_rss_mb, ...) and a table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from leo_tf.bench import resources

flags.DEFINE_string("case", "", "Run one case in this process (used internally).")
flags.DEFINE_integer("train_steps", 30, "Timed meta-training steps per case.")
flags.DEFINE_integer("eval_tasks", 1000, "Tasks evaluated per evaluation case.")
flags.DEFINE_string("cases", "", "Comma-separated subset of cases (default: all).")
flags.DEFINE_bool("pipeline", True, "Also time the episode pipeline alone (leo_tf.bench.data).")
FLAGS = flags.FLAGS

IMAGES_PER_CLASS = 600


def _cases() -> list[str]:
  names = []
  for kind in ("train", "eval"):
    for shots in (1, 5):
      for xla in ("xla", "noxla"):
        names.append(f"{kind}_5way{shots}shot_{xla}")
  # tf.distribute: one meta-batch of 12 split over 2 logical CPU replicas (no XLA there).
  names += ["train_5way1shot_mirrored2", "train_5way5shot_mirrored2"]
  # K > 1 with the class-mean weight sampling (one draw per class) beside the default per-copy.
  names += ["train_5way5shot_xla_classmean"]
  return names


def run_case(case: str) -> dict:
  """Times one case in this process."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import tensorflow as tf
  from leo_tf.classification import evaluation
  from leo_tf.classification.leo import LEO
  from leo_tf.core.config import ModelConfig, OuterConfig
  from leo_tf.data import episodes
  from leo_tf.data import random_problems
  from leo_tf.outer import step as outer_step
  # pylint: enable=g-import-not-at-top

  kind, ways_shots, xla, *variant = case.split("_")
  model_config = ModelConfig(weight_sampling="class_mean" if variant == ["classmean"] else
                             "per_copy")
  shots = int(ways_shots.split("way")[1].rstrip("shot"))
  jit = xla == "xla"
  times = []
  if kind == "train" and xla.startswith("mirrored"):
    # tf.distribute over logical CPU devices (replicas run without XLA there).
    from leo_tf.outer import distribute  # pylint: disable=g-import-not-at-top
    replicas = int(xla[len("mirrored"):])
    strategy = distribute.make_strategy("mirrored")
    if strategy.num_replicas_in_sync != replicas:
      raise RuntimeError(f"{case}: expected {replicas} replicas, got "
                         f"{strategy.num_replicas_in_sync}.")
    config = OuterConfig(jit_compile=True)
    with strategy.scope():
      model = LEO(model_config, seed=0)
      optimizer = outer_step.make_optimizer(model, config)
    step = distribute.make_distributed_train_step(model, optimizer, config, strategy)
    batch = 12
    problems = []
    for s in range(4):
      p = random_problems.random_problem(batch, 5, shots, 15, 640, seed=s)
      per = batch // replicas
      problems.append(distribute.split_for_replicas(
          strategy, lambda r, p=p: episodes.ProblemInstance(*[a[r * per:(r + 1) * per] for a in p])))
  else:
    model = LEO(model_config, seed=0)
  if kind == "train" and not xla.startswith("mirrored"):
    config = OuterConfig(jit_compile=jit)
    step = outer_step.make_train_step(model, outer_step.make_optimizer(model, config), config)
    batch = 12
    problems = [random_problems.random_problem(batch, 5, shots, 15, 640, seed=s) for s in range(4)]
    problems = [episodes.ProblemInstance(*[tf.constant(a) for a in p]) for p in problems]
  if kind == "train":
    for s in range(3):  # warm-up and compilation
      step(problems[s % 4], tf.constant([0, s]))["loss"].numpy()
    for s in range(FLAGS.train_steps):
      t0 = time.perf_counter()
      step(problems[s % 4], tf.constant([0, s]))["loss"].numpy()
      times.append(time.perf_counter() - t0)
    tasks_per_step = batch
  else:
    # A split of 20 classes x 600 images (miniImageNet's test split), tasks drawn
    # from it by the episode sampler, evaluated as classification.experiment does: the fast
    # path (indices, one product with the split's embeddings), 200 tasks a batch.
    from leo_tf.data import embeddings as embeddings_lib  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)
    features = rng.standard_normal((20 * IMAGES_PER_CLASS, 640)).astype(np.float32)
    names = [f"c{i // IMAGES_PER_CLASS:02d}" for i in range(features.shape[0])]
    split = embeddings_lib.build_split(features, names, [f"{n}_{i}" for i, n in enumerate(names)],
                                       ("random",))
    sampler = episodes.EpisodeSampler(split, 5, shots, IMAGES_PER_CLASS - shots, seed=0,
                                      stream="test")
    step = evaluation.SplitEvaluator(model, split, shots, jit_compile=jit)
    chunk = 200
    num_chunks = -(-FLAGS.eval_tasks // chunk)  # full chunks only: one compiled shape
    for warm in range(3):  # compilations (a few widths of the class-blocked product)
      step(sampler.sample_task_indices(warm * chunk, chunk)).numpy()
    for c in range(num_chunks):
      t0 = time.perf_counter()  # sampling the tasks' indices included
      step(sampler.sample_task_indices((c + 3) * chunk, chunk)).numpy()
      times.append(time.perf_counter() - t0)
    tasks_per_step = chunk
  times_ms = np.array(times) * 1000
  median = float(np.median(times_ms))
  return {
      "case": case, "tasks_per_s": tasks_per_step / (median / 1000), "step_ms_median": median,
      "step_ms_p10": float(np.percentile(times_ms, 10)),
      "step_ms_p90": float(np.percentile(times_ms, 90)), "tasks_per_step": tasks_per_step,
      "timed_steps": len(times), "peak_rss_mb": resources.peak_rss_mb(),
  }


def format_table(rows: list[dict]) -> str:
  lines = [f"{'case':<24} {'tasks/s':>9} {'step ms (p10-p90)':>22} {'tasks/step':>10} "
           f"{'peak RSS MB':>11}"]
  for r in rows:
    if "error" in r:
      lines.append(f"{r['case']:<24} failed: {r['error'][:60]}")
      continue
    spread = f"{r['step_ms_median']:.1f} ({r['step_ms_p10']:.1f}-{r['step_ms_p90']:.1f})"
    lines.append(f"{r['case']:<24} {r['tasks_per_s']:>9.1f} {spread:>22} "
                 f"{r['tasks_per_step']:>10} {r['peak_rss_mb']:>11.0f}")
  return "\n".join(lines)


def main(argv):
  del argv
  if FLAGS.case:
    if "mirrored" in FLAGS.case:
      from leo_tf.outer import distribute  # pylint: disable=g-import-not-at-top
      distribute.configure_cpu_devices(int(FLAGS.case.rsplit("mirrored", 1)[1]))
    print(json.dumps(run_case(FLAGS.case)), flush=True)
    return
  cases = FLAGS.cases.split(",") if FLAGS.cases else _cases()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  rows = []
  for case in cases:
    result = subprocess.run(
        [sys.executable, "-m", "leo_tf.bench", f"--case={case}",
         f"--train_steps={FLAGS.train_steps}", f"--eval_tasks={FLAGS.eval_tasks}"],
        capture_output=True, text=True, env=env)
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    row = json.loads(lines[-1]) if result.returncode == 0 and lines else {
        "case": case, "error": result.stderr.strip().splitlines()[-1:] or ["unknown"]}
    if "error" in row:
      row["error"] = str(row["error"])
    print(json.dumps(row), flush=True)
    rows.append(row)
  print(format_table(rows))
  if FLAGS.pipeline:
    # The episode pipeline alone: its own JSON lines (case, episodes_per_s, peak_rss_mb) and table.
    result = subprocess.run([sys.executable, "-m", "leo_tf.bench.data"], capture_output=True,
                            text=True, env=env)
    if result.returncode:
      print(f"pipeline: failed: {(result.stderr.strip().splitlines() or ['unknown'])[-1]}")
    else:
      print("Episode pipeline alone (python -m leo_tf.bench.data):")
      print(result.stdout.rstrip())


if __name__ == "__main__":
  app.run(main)
