"""leo_tf.bench.data: the episode pipeline's throughput benchmark reports every case."""

from leo_tf.bench import data as bench_data
from tests import splits

D = 4


def _split(class_sizes, seed=0):
  return splits.make_split(class_sizes, seed, embedding_dim=D)


def test_bench_data_run_reports_every_case():
  split = _split([25] * 6)
  results = bench_data.run(split, split, num_batches=3, batch_size=2, num_eval_tasks=5,
                           eval_chunk_size=2)
  assert [r["case"] for r in results] == ["sample_loop", "eval_chunks", "make_dataset"]
  assert all(r["episodes_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in results)
  assert results[1]["num_tasks"] == 5 and results[1]["num_val_examples_per_class"] == 24
  assert results[2]["num_batches"] == 3
  assert "eval_chunks" in bench_data.format_table(results)
