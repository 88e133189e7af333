"""Tests for leo_tf.bench.throughput, the command python -m leo_tf.bench: one JSON line per case with the fields issue 9 names."""

import json
import os
import subprocess
import sys

from tests.paths import REPO


def test_bench_prints_a_json_line_per_case_and_a_table():
  result = subprocess.run(
      [sys.executable, "-m", "leo_tf.bench", "--cases=train_5way1shot_noxla,no_such_case",
       "--train_steps=2", "--nopipeline"],
      capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  assert [r["case"] for r in rows] == ["train_5way1shot_noxla", "no_such_case"]
  timed, failed = rows
  for field in ("tasks_per_s", "step_ms_median", "step_ms_p10", "step_ms_p90", "peak_rss_mb"):
    assert timed[field] > 0, (field, timed)
  assert timed["tasks_per_step"] == 12 and timed["timed_steps"] == 2
  assert timed["tasks_per_s"] == 12 / (timed["step_ms_median"] / 1000)
  assert "error" in failed  # an unknown case is reported, not fatal to the others
  assert "case" in result.stdout and "tasks/s" in result.stdout  # the table's header
  assert "train_5way1shot_noxla" in result.stdout.splitlines()[-2]
