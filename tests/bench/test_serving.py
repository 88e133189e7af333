"""Tests for leo_tf.bench.serving's pieces: which version it times, its percentiles, the
alternating rounds, the goals' arithmetic, the bare backbone, and that its measuring process
loads the model without leo_tf. (The benchmark itself is run by hand; BUILD_NOTES.md.)"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.bench import serving
from leo_tf.images import backbones


def test_latest_version_is_the_highest_integer_folder(tmp_path):
  for name in ("1", "10", "9", ".tmp-11-123", "notes"):
    os.makedirs(tmp_path / name)
  assert serving.latest_version_dir(str(tmp_path)) == str(tmp_path / "10")
  (tmp_path / "10" / "saved_model.pb").write_bytes(b"")
  assert serving.latest_version_dir(str(tmp_path / "10")) == str(tmp_path / "10")
  with pytest.raises(FileNotFoundError, match="No version folder"):
    serving.latest_version_dir(str(tmp_path / "notes"))
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    serving.latest_version_dir(str(tmp_path / "missing"))


def test_percentiles_by_hand():
  # 1..100 ms: numpy's linear interpolation puts p50 at 50.5 ms and p99 at 99.01 ms.
  result = serving.percentiles_ms([i / 1000 for i in range(1, 101)])
  assert result["p50_ms"] == pytest.approx(50.5)
  assert result["p99_ms"] == pytest.approx(99.01)
  assert result["mean_ms"] == pytest.approx(50.5)


def test_the_measuring_process_loads_the_file_without_leo_tf():
  # As serving._MEASURE does: the file by path, then what it imported.
  check = (f"import importlib.util, sys\n"
           f"spec = importlib.util.spec_from_file_location('b', {serving.__file__!r})\n"
           f"module = importlib.util.module_from_spec(spec)\n"
           f"sys.modules['b'] = module\n"
           f"spec.loader.exec_module(module)\n"
           f"print(sorted(m for m in sys.modules if m.split('.')[0] == 'leo_tf'))")
  result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=60, check=True, cwd="/")
  assert result.stdout.strip() == "[]"


def test_rounds_split_the_calls_and_alternate_model_and_backbone():
  assert serving.rounds_of(7, 3) == [3, 2, 2]
  assert serving.rounds_of(2, 3) == [1, 1, 0]
  assert sum(serving.rounds_of(100, 5)) == 100
  leo = serving.Measurement("c/leo", "c", "single", "leo", "images", "", 1, 30, 5)
  bare = serving.Measurement("c/bare", "c", "backbone_single", "backbone", "embed", "", 1, 30, 5)
  order = []

  def run_calls(m, count):
    order.append((m.model, count))
    return [0.001 * len(order)] * count

  seconds = serving.time_pairs([[leo, bare]], run_calls, num_warmup=2, rounds=3)
  # Warmup of each (2 calls, not kept), then 2 + 2 + 1 calls of each, taking turns.
  assert order == [("leo", 2), ("backbone", 2), ("leo", 2), ("backbone", 2), ("leo", 2),
                   ("backbone", 2), ("leo", 1), ("backbone", 1)]
  assert seconds == {"c/leo": [0.003] * 2 + [0.005] * 2 + [0.007],
                     "c/bare": [0.004] * 2 + [0.006] * 2 + [0.008]}


def test_goals_by_hand():
  def measurement(kind, batch, images):
    return serving.Measurement(f"{kind}{batch}", serving.GOAL_CASE, kind,
                               "backbone" if kind.startswith("backbone") else "leo",
                               "x", "", batch, images, 3)

  pairs = [[measurement("single", 1, 30), measurement("backbone_single", 1, 30),
            measurement("chunked_single", 1, 30), measurement("embeddings_single", 1, 30)],
           [measurement("batched", 32, 960), measurement("backbone_batched", 32, 960)]]
  # Medians: LEO 5.5 ms against the backbone's 4 ms (adds 1.5 ms); B = 32: 1.2 s against 1 s,
  # 800 against 960 images/s, a ratio of 0.8333.
  seconds = {"single1": [0.005, 0.0055, 0.009], "backbone_single1": [0.004, 0.004, 0.004],
             "chunked_single1": [0.0043, 0.0042, 0.0041], "embeddings_single1": [0.001] * 3,
             "batched32": [1.2, 1.2, 1.3], "backbone_batched32": [1.0, 0.9, 1.1]}
  results = serving.summarize(pairs, {"c": seconds, "python": seconds})
  single = next(r for r in results if r["kind"] == "single" and r["runtime"] == "c")
  assert single["p50_ms"] == pytest.approx(5.5) and single["tasks_per_s"] == pytest.approx(
      181.82, abs=0.01)
  batched = next(r for r in results if r["kind"] == "batched" and r["runtime"] == "c")
  assert batched["tasks_per_s"] == pytest.approx(26.67, abs=0.01)
  assert batched["images_per_s"] == pytest.approx(800.0)
  rows = {(g["runtime"], g["goal"]): g for g in serving.goals(results)}
  added = rows[("c", "adaptation_added_p50_ms")]
  assert added["value"] == pytest.approx(1.5) and added["met"] and added["judged"]
  ratio = rows[("c", "batched_B32_images_ratio")]
  assert ratio["value"] == pytest.approx(0.833, abs=1e-3) and ratio["met"] and ratio["judged"]
  assert not rows[("python", "adaptation_added_p50_ms")]["judged"]
  table = serving.format_tables(results, serving.goals(results))
  assert "goal adaptation_added_p50_ms <= 2.0: c omniglot_5way1shot 1.5 met" in table
  # The breakdown: the chunked backbone's median 4.2 ms, LEO alone 1 ms.
  row = next(line for line in table.splitlines() if line.startswith("c "))
  assert row.split()[-2:] == ["4.20", "1.00"], row


def test_the_cases_take_the_exports_chunk_or_their_own_task_size():
  from leo_tf.serving import images  # pylint: disable=g-import-not-at-top
  assert serving.EMBED_CHUNK == images.EMBED_CHUNK  # the copy the measuring process reads
  assert {c.embed_chunk for c in serving.image_cases().values()} == {images.EMBED_CHUNK}
  assert {c.embed_chunk for c in serving.image_cases(embed_chunk=7).values()} == {7}
  own = serving.image_cases(embed_chunk=0)
  assert own["omniglot_5way1shot"].embed_chunk == 30  # 5 x 1 + 25
  assert own["omniglot_20way1shot"].embed_chunk == 120  # 20 x 1 + 100
  # The other export options reach every case, and its front end.
  options = serving.image_cases(embed_chunk=960, jit_compile=True, embed_pad=False)
  assert {(c.embed_chunk, c.jit_compile, c.embed_pad) for c in options.values()} == {
      (960, True, False)}
  front = serving.front_end(options["omniglot_5way1shot"])
  assert (front.chunk, front.pad) == (960, False)
  assert {(c.jit_compile, c.embed_pad) for c in serving.image_cases().values()} == {(False, True)}


def test_the_bare_backbone_is_stage_1s_preprocessing_and_backbone():
  case = serving.ImageCase("tiny", backbones.BackboneConfig(conv4_channels=(4, 4, 4, 8)),
                           "omniglot", 3, 1, 2, 35, True)
  support, query = serving.task_images(case, 2, seed=0)  # B = 2 tasks
  assert support.shape == (2, 3, 1, 35, 35, 1) and query.shape == (2, 6, 35, 35, 1)
  assert support.dtype == np.uint8 and set(np.unique(support)) <= {0, 255}
  front = serving.front_end(case)
  module = serving.backbone_module(front)
  pixels = query[0]  # [6, 35, 35, 1]
  got = module.embed(tf.constant(pixels))["embeddings"].numpy()  # [6, 8]
  expected = front.backbone(front.preprocess(pixels), training=False).numpy()
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  chunked = module.embed_chunked(tf.constant(pixels))["embeddings"].numpy()  # padded to 32
  np.testing.assert_allclose(chunked, expected, rtol=0, atol=1e-6)
  assert sorted(module.served_variables) == sorted(front.variables())
