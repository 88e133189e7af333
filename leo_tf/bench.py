r"""Throughput benchmark: `python -m leo_tf.bench`.

Times, after warm-up, on random L2-normalised embeddings with the model's real
configuration (D = 640, n_z = 64, 5 + 5 inner steps):
  - one meta-training step, 5-way 1-shot and 5-shot, meta-batch 12, 15 queries
    per class;
  - evaluation, 5-way 1-shot and 5-shot with every remaining query (599 / 595
    per class of 600 images), 200 tasks per batch, fed in chunks bounded by
    --eval_chunk_mb as the trainer does;
each with XLA on and off, and the episode pipeline alone (leo_tf.bench_data).

Every case runs in its own process so that its peak resident memory
(ru_maxrss) is its own. Prints one JSON line per case (case, tasks_per_s,
step_ms_median, step_ms_p10, step_ms_p90, peak_rss_mb, ...) and a table.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

flags.DEFINE_string("case", "", "Run one case in this process (used internally).")
flags.DEFINE_integer("train_steps", 30, "Timed meta-training steps per case.")
flags.DEFINE_integer("eval_tasks", 1000, "Tasks evaluated per evaluation case.")
flags.DEFINE_integer("eval_chunk_mb", 256, "Memory bound per evaluation chunk (as the trainer).")
flags.DEFINE_string("cases", "", "Comma-separated subset of cases (default: all).")
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
  return names


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_case(case: str) -> dict:
  """Times one case in this process."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from leo_tf import episodes, outer, testing  # pylint: disable=g-import-not-at-top
  from leo_tf.config import ModelConfig, OuterConfig  # pylint: disable=g-import-not-at-top
  from leo_tf.model import LEO  # pylint: disable=g-import-not-at-top

  kind, ways_shots, xla = case.split("_")
  shots = int(ways_shots.split("way")[1].rstrip("shot"))
  jit = xla == "xla"
  times = []
  if kind == "train" and xla.startswith("mirrored"):
    # tf.distribute over logical CPU devices (replicas run without XLA there).
    from leo_tf import distribute  # pylint: disable=g-import-not-at-top
    replicas = int(xla[len("mirrored"):])
    strategy = distribute.make_strategy("mirrored")
    if strategy.num_replicas_in_sync != replicas:
      raise RuntimeError(f"{case}: expected {replicas} replicas, got "
                         f"{strategy.num_replicas_in_sync}.")
    config = OuterConfig(jit_compile=True)
    with strategy.scope():
      model = LEO(ModelConfig(), seed=0)
      optimizer = outer.make_optimizer(model, config)
    step, _ = distribute.make_distributed_train_step(model, optimizer, config, strategy)
    batch = 12
    problems = []
    for s in range(4):
      p = testing.random_problem(batch, 5, shots, 15, 640, seed=s)
      per = batch // replicas
      problems.append(distribute.split_for_replicas(
          strategy, lambda r, p=p: episodes.ProblemInstance(*[a[r * per:(r + 1) * per] for a in p])))
  else:
    model = LEO(ModelConfig(), seed=0)
  if kind == "train" and not xla.startswith("mirrored"):
    config = OuterConfig(jit_compile=jit)
    step = outer.make_train_step(model, outer.make_optimizer(model, config), config)
    batch = 12
    problems = [testing.random_problem(batch, 5, shots, 15, 640, seed=s) for s in range(4)]
    problems = [episodes.ProblemInstance(*[tf.constant(a) for a in p]) for p in problems]
  if kind == "train":
    for s in range(3):  # warm-up and compilation
      step(problems[s % 4], tf.constant([0, s])).loss.numpy()
    for s in range(FLAGS.train_steps):
      t0 = time.perf_counter()
      step(problems[s % 4], tf.constant([0, s])).loss.numpy()
      times.append(time.perf_counter() - t0)
    tasks_per_step = batch
  else:
    eval_step = outer.make_eval_step(model, jit_compile=jit)
    queries = IMAGES_PER_CLASS - shots
    task_bytes = 5 * IMAGES_PER_CLASS * 640 * 4
    chunk = max(1, min(200, (FLAGS.eval_chunk_mb << 20) // task_bytes))
    rng = np.random.default_rng(0)
    # A split of 20 classes x 600 images; tasks gather from it, as evaluation does.
    split_embeddings = rng.standard_normal((20 * IMAGES_PER_CLASS, 640)).astype(np.float32)
    split_embeddings /= np.linalg.norm(split_embeddings, axis=1, keepdims=True)

    def make_chunk(seed, size):
      r = np.random.default_rng(seed)
      classes = np.argsort(r.random((size, 20)), axis=1)[:, :5]  # [B, N]
      images = np.argsort(r.random((size, 5, IMAGES_PER_CLASS)), axis=2)  # [B, N, 600]
      rows = classes[:, :, None] * IMAGES_PER_CLASS + images  # [B, N, 600]
      x = split_embeddings[rows]  # [B, N, 600, D]
      labels = np.broadcast_to(np.arange(5, dtype=np.int32)[None, :, None], rows.shape)
      return episodes.ProblemInstance(x[:, :, :shots], labels[:, :, :shots].copy(),
                                      x[:, :, shots:], labels[:, :, shots:].copy())

    eval_step(make_chunk(0, chunk))[0].numpy()  # compilation
    for c in range(-(-FLAGS.eval_tasks // chunk)):  # full chunks only: one compiled shape
      problem = make_chunk(c + 1, chunk)
      t0 = time.perf_counter()
      eval_step(problem)[0].numpy()
      times.append(time.perf_counter() - t0)
    tasks_per_step = chunk
    del queries
  times_ms = np.array(times) * 1000
  median = float(np.median(times_ms))
  return {
      "case": case, "tasks_per_s": tasks_per_step / (median / 1000), "step_ms_median": median,
      "step_ms_p10": float(np.percentile(times_ms, 10)),
      "step_ms_p90": float(np.percentile(times_ms, 90)), "tasks_per_step": tasks_per_step,
      "timed_steps": len(times), "peak_rss_mb": _peak_rss_mb(),
      # evaluation: the model's time only; building the chunk (a gather of
      # 7.7 MB per task) is timed by leo_tf.bench_data.
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
      from leo_tf import distribute  # pylint: disable=g-import-not-at-top
      distribute.configure_cpu_devices(int(FLAGS.case.rsplit("mirrored", 1)[1]))
    print(json.dumps(run_case(FLAGS.case)), flush=True)
    return
  cases = FLAGS.cases.split(",") if FLAGS.cases else _cases()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  rows = []
  for case in cases:
    result = subprocess.run(
        [sys.executable, "-m", "leo_tf.bench", f"--case={case}",
         f"--train_steps={FLAGS.train_steps}", f"--eval_tasks={FLAGS.eval_tasks}",
         f"--eval_chunk_mb={FLAGS.eval_chunk_mb}"], capture_output=True, text=True, env=env)
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    row = json.loads(lines[-1]) if result.returncode == 0 and lines else {
        "case": case, "error": result.stderr.strip().splitlines()[-1:] or ["unknown"]}
    if "error" in row:
      row["error"] = str(row["error"])
    print(json.dumps(row), flush=True)
    rows.append(row)
  print(format_table(rows))
  print("Episode pipeline alone: python -m leo_tf.bench_data")


if __name__ == "__main__":
  app.run(main)
