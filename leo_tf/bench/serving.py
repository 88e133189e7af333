r"""Latency of an exported LEO SavedModel: p50 and p99 of one request.

    python -m leo_tf.bench.serving --export_dir=/models/leo        # its latest version
    python -m leo_tf.bench.serving                                 # a throwaway D=640 model

Loads the SavedModel with tf.saved_model.load in a fresh process (one that
never imports leo_tf, like a server), warms it up, then times `--num_calls`
calls per case of one signature on one task, each call from arrays to numpy
outputs. Cases: 5-way 1-shot and 5-way 5-shot with 75 queries, for
serving_default (with adaptation) and generate (without). Prints one JSON line
per case, then a table.

Without --export_dir, a LEO with D = 640 and n_z = 64 (the paper's sizes and
the default ModelConfig) is written with its initial weights and exported to
a temporary folder: latency does not depend on the values of the weights, so
it is not trained.

This measures the SavedModel through TensorFlow's Python runtime on this
machine; TF Serving adds request parsing and gRPC/REST transport on top.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

# No leo_tf import at the top: the measuring process loads this file alone (_MEASURE).

# (name, N, K, Q): the cases timed.
CASES = (("5-way 1-shot", 5, 1, 75), ("5-way 5-shot", 5, 5, 75))
SIGNATURES = ("serving_default", "generate")


def latest_version_dir(export_dir: str) -> str:
  """<export_dir>/<highest version>, or export_dir itself if it holds saved_model.pb."""
  if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
    return export_dir
  if not os.path.isdir(export_dir):
    raise FileNotFoundError(f"--export_dir {export_dir!r} is not a folder; pass the model base "
                            "path that python -m leo_tf.export wrote, or a version in it.")
  from leo_tf.serving import publish  # pylint: disable=g-import-not-at-top
  found = publish.versions(export_dir)
  if not found:
    raise FileNotFoundError(
        f"No version folder (<integer>/saved_model.pb) in {export_dir!r}; export one with "
        "python -m leo_tf.export --checkpoint_path=<run> --export_dir=<this folder>.")
  return os.path.join(export_dir, str(found[-1]))


def throwaway_export(folder: str, embedding_dim: int = 640, num_latents: int = 64) -> str:
  """Exports an untrained LEO of the given sizes under `folder`; returns the version dir."""
  # pylint: disable=g-import-not-at-top
  from leo_tf.classification import experiment
  from leo_tf.core.config import ModelConfig, OuterConfig
  from leo_tf.outer import checkpoints
  from leo_tf.serving import export
  # pylint: enable=g-import-not-at-top
  run_dir = os.path.join(folder, "run")
  config = experiment.RunConfig(
      model=ModelConfig(embedding_dim=embedding_dim, num_latents=num_latents),
      outer=OuterConfig(checkpoint_path=run_dir), progress=False)
  checkpoints.check_resume_config(run_dir, config)  # writes config.json
  checkpoints.RunState(run_dir, lambda: experiment.build_learner(config), config.outer
                       ).save_best(0.0)  # step 0, the initial weights
  return export.export_checkpoint(run_dir, os.path.join(folder, "models"))


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
  """p50, p99 and mean of call times, in milliseconds."""
  ms = 1e3 * np.asarray(seconds, np.float64)
  return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
          "mean_ms": float(np.mean(ms))}


def measure(version_dir: str, num_calls: int, num_warmup: int, num_threads: int
            ) -> list[dict[str, Any]]:
  """Times every (signature, case) on the SavedModel; runs in the measuring process."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if num_threads > 0:
    tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    tf.config.threading.set_inter_op_parallelism_threads(num_threads)
  t0 = time.perf_counter()
  loaded = tf.saved_model.load(version_dir)
  load_s = time.perf_counter() - t0
  embedding_dim = int(loaded.signatures["serving_default"].structured_outputs[
      "classifier_weights"].shape[-1])
  rng = np.random.default_rng(0)
  results = []
  for signature in SIGNATURES:
    fn = loaded.signatures[signature]
    for name, n, k, q in CASES:
      # A few different tasks, so no call sees the previous call's inputs.
      tasks = [(rng.uniform(0, 1, (n, k, embedding_dim)).astype(np.float32),
                rng.uniform(0, 1, (q, embedding_dim)).astype(np.float32)) for _ in range(8)]
      first = time.perf_counter()
      for i in range(num_warmup):
        support, query = tasks[i % len(tasks)]
        fn(support=tf.constant(support), query=tf.constant(query))
      first_s = time.perf_counter() - first
      seconds = []
      for i in range(num_calls):
        support, query = tasks[i % len(tasks)]
        start = time.perf_counter()
        outputs = fn(support=tf.constant(support), query=tf.constant(query))
        _ = {key: value.numpy() for key, value in outputs.items()}
        seconds.append(time.perf_counter() - start)
      results.append({
          "signature": signature, "case": name, "num_classes": n, "num_shots": k,
          "num_queries": q, "embedding_dim": embedding_dim, "calls": num_calls,
          "warmup_calls": num_warmup, "warmup_s": round(first_s, 3),
          **{key: round(value, 3) for key, value in percentiles_ms(seconds).items()},
          "threads": num_threads or "default", "load_s": round(load_s, 3),
          "tensorflow": tf.__version__})
  return results


def format_table(results: list[dict[str, Any]]) -> str:
  lines = [f"{'signature':16s} {'case':13s} {'Q':>3s} {'p50 ms':>8s} {'p99 ms':>8s} "
           f"{'mean ms':>8s}"]
  for r in results:
    lines.append(f"{r['signature']:16s} {r['case']:13s} {r['num_queries']:3d} "
                 f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['mean_ms']:8.2f}")
  return "\n".join(lines)


def run_benchmark(export_dir: str | None, num_calls: int = 200, num_warmup: int = 20,
                  num_threads: int = 0) -> list[dict[str, Any]]:
  """Exports a throwaway model if needed, then measures in a fresh process.

  Returns:
    One dict per (signature, case) with p50_ms, p99_ms, mean_ms and the setup.
  """
  with tempfile.TemporaryDirectory() as tmp:
    version_dir = latest_version_dir(export_dir) if export_dir else throwaway_export(tmp)
    out = os.path.join(tmp, "results.json")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    subprocess.run(
        [sys.executable, "-c", _MEASURE, version_dir, out, str(num_calls), str(num_warmup),
         str(num_threads)], check=True, env=env)
    with open(out) as f:
      results = json.load(f)
  for r in results:
    r["version_dir"] = version_dir if export_dir else "(throwaway, untrained D=640 n_z=64)"
  return results


# The measuring process: imports this file by path (not the leo_tf package) and
# TensorFlow, so it loads the SavedModel the way a server would.
_MEASURE = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench_serving", {os.path.abspath(__file__)!r})
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
version_dir, out, num_calls, num_warmup, num_threads = sys.argv[1:]
results = bench.measure(version_dir, int(num_calls), int(num_warmup), int(num_threads))
leaked = [m for m in sys.modules if m == "leo_tf" or m.startswith("leo_tf.")]
if leaked:
  raise RuntimeError(f"the measuring process imported {{leaked}}; it must load the model alone")
with open(out, "w") as f:
  json.dump(results, f)
"""


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from leo_tf.outer import progress  # pylint: disable=g-import-not-at-top
  progress.start_command(argv, "leo_tf.bench.serving")
  f = flags.FLAGS
  try:
    results = run_benchmark(f.export_dir or None, f.num_calls, f.num_warmup, f.num_threads)
  except FileNotFoundError as e:
    raise SystemExit(f"leo_tf.bench.serving: error: {e}") from None
  for r in results:
    print(json.dumps(r, sort_keys=True))
  print(format_table(results))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("export_dir", "", "A model base path (its latest version is timed) or a "
                      "version folder; empty: export a throwaway untrained D=640 model.")
  flags.DEFINE_integer("num_calls", 200, "Timed calls per signature and case.")
  flags.DEFINE_integer("num_warmup", 20, "Untimed calls before them (the first traces).")
  flags.DEFINE_integer("num_threads", 0,
                       "TensorFlow intra- and inter-op threads (0: TensorFlow's default).")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from leo_tf.outer import progress  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main, flags_parser=progress.flags_parser("leo_tf.bench.serving"))
