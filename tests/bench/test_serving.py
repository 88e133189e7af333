"""Tests for leo_tf.bench.serving's pieces: which version it times, its percentiles, and that
its measuring process loads the model without leo_tf."""

import os
import subprocess
import sys

import pytest

from leo_tf.bench import serving


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
           f"spec.loader.exec_module(module)\n"
           f"print(sorted(m for m in sys.modules if m.split('.')[0] == 'leo_tf'))")
  result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          timeout=60, check=True, cwd="/")
  assert result.stdout.strip() == "[]"
