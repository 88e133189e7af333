r"""Throughput of the episode pipeline alone (no model).

    python -m leo_tf.bench.data                      # generates a synthetic set in a temp dir
    python -m leo_tf.bench.data --data_path=data/embeddings --dataset_name=miniImageNet

Cases, each printed as one JSON line and then as a table:
  sample_loop:  EpisodeSampler.sample in a Python loop, 5-way 5-shot, 15 queries, batch 12.
  make_dataset: iterating episodes.make_dataset (tf.data, prefetch) after a warm-up, same tasks.
  eval_chunks:  episodes.iterate_tasks, 5-way 1-shot, every remaining image a query (V = min
                class size - 1), in chunks; its peak RSS shows memory stays bounded by the chunk.

peak_rss_mb is the process's peak resident memory (getrusage ru_maxrss) at the end of the
case; eval_chunks runs before TensorFlow is imported so its peak is not TensorFlow's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

from leo_tf.bench import resources
from leo_tf.data import embeddings as emb
from leo_tf.data import episodes
from leo_tf.data import synthetic
from leo_tf.core.config import DataConfig


def bench_sample_loop(sampler: episodes.EpisodeSampler, batch_size: int,
                      num_batches: int) -> dict[str, Any]:
  sampler.sample(0, batch_size)  # warm-up
  start = time.perf_counter()
  for step in range(1, num_batches + 1):
    sampler.sample(step, batch_size)
  seconds = time.perf_counter() - start
  return {"case": "sample_loop", "episodes_per_s": num_batches * batch_size / seconds,
          "batches_per_s": num_batches / seconds, "batch_size": batch_size,
          "num_batches": num_batches, "seconds": seconds, "peak_rss_mb": resources.peak_rss_mb()}


def bench_make_dataset(sampler: episodes.EpisodeSampler, batch_size: int, num_batches: int,
                       warmup_batches: int = 20) -> dict[str, Any]:
  dataset = episodes.make_dataset(sampler, batch_size, start_step=0,
                                  num_steps=warmup_batches + num_batches)
  iterator = iter(dataset)
  for _ in range(warmup_batches):
    next(iterator)
  start = time.perf_counter()
  count = 0
  for _ in iterator:
    count += 1
  seconds = time.perf_counter() - start
  return {"case": "make_dataset", "episodes_per_s": count * batch_size / seconds,
          "batches_per_s": count / seconds, "batch_size": batch_size, "num_batches": count,
          "seconds": seconds, "peak_rss_mb": resources.peak_rss_mb()}


def bench_eval_chunks(split: emb.EmbeddingSplit, num_tasks: int, chunk_size: int,
                      seed: int = 0) -> dict[str, Any]:
  v = episodes.num_eval_val_examples(split, 1)
  sampler = episodes.EpisodeSampler(split, 5, 1, v, seed, "test")
  rss_before = resources.peak_rss_mb()
  start = time.perf_counter()
  total = 0
  for problem in episodes.iterate_tasks(sampler, num_tasks, chunk_size):
    total += problem.tr_input.shape[0]
  seconds = time.perf_counter() - start
  chunk_mb = chunk_size * 5 * (1 + v) * split.embedding_dim * 4 / 2**20
  all_at_once_mb = num_tasks * 5 * (1 + v) * split.embedding_dim * 4 / 2**20
  return {"case": "eval_chunks", "episodes_per_s": total / seconds, "num_tasks": total,
          "chunk_size": chunk_size, "num_val_examples_per_class": v, "seconds": seconds,
          "peak_rss_mb": resources.peak_rss_mb(), "peak_rss_before_mb": rss_before,
          "chunk_inputs_mb": chunk_mb, "all_tasks_at_once_mb": all_at_once_mb}


def run(train: emb.EmbeddingSplit, evaluation: emb.EmbeddingSplit, num_batches: int = 2000,
        batch_size: int = 12, num_eval_tasks: int = 2000, eval_chunk_size: int = 25,
        seed: int = 0) -> list[dict[str, Any]]:
  """Runs the three cases; returns one dict per case."""
  sampler = episodes.EpisodeSampler(train, 5, 5, 15, seed, "train")
  results = [bench_sample_loop(sampler, batch_size, num_batches),
             bench_eval_chunks(evaluation, num_eval_tasks, eval_chunk_size, seed)]
  results.append(bench_make_dataset(sampler, batch_size, num_batches))  # imports TensorFlow
  return results


def format_table(results: list[dict[str, Any]]) -> str:
  lines = [f"{'case':14s} {'episodes/s':>12s} {'peak RSS MB':>12s}  notes"]
  for r in results:
    if r["case"] == "eval_chunks":
      notes = (f"5-way 1-shot, V={r['num_val_examples_per_class']}, {r['num_tasks']} tasks in "
               f"chunks of {r['chunk_size']} ({r['chunk_inputs_mb']:.0f} MB each; all at once: "
               f"{r['all_tasks_at_once_mb']:.0f} MB)")
    else:
      notes = f"5-way 5-shot, 15 queries, batch {r['batch_size']}, {r['num_batches']} batches"
    lines.append(f"{r['case']:14s} {r['episodes_per_s']:12.0f} {r['peak_rss_mb']:12.0f}  {notes}")
  return "\n".join(lines)


def _load_or_generate(data_path: str | None, dataset_name: str, embedding_crop: str,
                      tmp_dir: str) -> tuple[emb.EmbeddingSplit, emb.EmbeddingSplit, str]:
  if data_path is None:
    config = synthetic.SyntheticConfig()
    subspaces = synthetic.make_subspaces(config)
    for split in ("train", "test"):
      x, keys, labels = synthetic.generate_split(config, split, subspaces)
      emb.write_split(emb.split_path(tmp_dir, synthetic.DATASET_NAME, synthetic.EMBEDDING_CROP,
                                     split), x, keys, labels)
    data_path, dataset_name, embedding_crop = tmp_dir, synthetic.DATASET_NAME, "center"
  data_config = DataConfig(data_path=data_path, dataset_name=dataset_name,
                           embedding_crop=embedding_crop)
  return (emb.load_split(data_config, "train"), emb.load_split(data_config, "test"),
          os.path.join(data_path, dataset_name, embedding_crop))


def main(argv):
  del argv  # Unused.
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  with tempfile.TemporaryDirectory() as tmp_dir:
    start = time.perf_counter()
    train, test, source = _load_or_generate(f.data_path, f.dataset_name, f.embedding_crop,
                                            tmp_dir)
    print(f"# data: {source} (train {train.num_classes} classes x {train.num_images} images, "
          f"test {test.num_classes} classes), ready in {time.perf_counter() - start:.1f} s; "
          f"{os.cpu_count()} CPUs; numpy {np.__version__}", file=sys.stderr)
    results = run(train, test, num_batches=f.num_batches, batch_size=f.batch_size,
                  num_eval_tasks=f.num_eval_tasks, eval_chunk_size=f.eval_chunk_size)
  for r in results:
    print(json.dumps(r, sort_keys=True))
  print(format_table(results))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("data_path", None,
                      "Folder with <dataset_name>/<crop>/*_embeddings.pkl; unset: generate the "
                      "synthetic train and test splits in a temporary folder.")
  flags.DEFINE_string("dataset_name", "synthetic", "Dataset folder under data_path.")
  flags.DEFINE_string("embedding_crop", "center", "center or multiview.")
  flags.DEFINE_integer("num_batches", 2000, "Meta-training batches timed per case.")
  flags.DEFINE_integer("batch_size", 12, "Tasks per meta-training batch.")
  flags.DEFINE_integer("num_eval_tasks", 2000, "Evaluation tasks timed.")
  flags.DEFINE_integer("eval_chunk_size", 25, "Evaluation tasks per chunk.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
