"""The command `python -m leo_tf.export` end to end: it exports a run's best checkpoint with a
stage-1 backbone (--backbone_dir) as version 1, reports the version and its signatures,
records the source, and refuses to export the same checkpoint again. (The export itself:
tests/serving.)
"""

import os
import subprocess
import sys

import pytest

from leo_tf.classification import experiment
from leo_tf.data import atomic
from leo_tf.serving import publish
from tests.serving.helpers import D, SUBPROCESS_ENV, run_config, trained_run, write_backbone


def _export_command(run_dir, base, *flags):
  return subprocess.run(
      [sys.executable, "-m", "leo_tf.export", f"--checkpoint_path={run_dir}",
       f"--export_dir={base}", *flags],
      capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300, check=False)


@pytest.fixture(scope="module")
def command_export(tmp_path_factory):
  """A run folder (best checkpoint at step 7, score 0.625) and the command's first export."""
  run_dir = str(tmp_path_factory.mktemp("run"))
  base = os.path.join(str(tmp_path_factory.mktemp("models")), "leo")
  config = run_config(run_dir)
  atomic.write_json_atomically(os.path.join(run_dir, "config.json"), config.to_dict())
  run = trained_run(config, seed=0)
  run.step.assign(7)
  prefix = run.save_best(0.625)
  backbone_dir = write_backbone(str(tmp_path_factory.mktemp("stage1")))
  result = _export_command(run_dir, base, f"--backbone_dir={backbone_dir}", "--embed_chunk=30",
                           "--jit_compile")
  assert result.returncode == 0, result.stderr[-3000:]
  return config, run_dir, prefix, base, result.stdout


def test_command_line_reports_and_records_the_source(command_export):
  config, _, prefix, base, stdout = command_export
  version_dir = os.path.join(base, "1")
  assert sorted(os.listdir(base)) == ["1"]  # no temporary folder left
  assert version_dir in stdout
  assert ("signatures: embeddings_batched, generate, image_bytes, image_bytes_batched, images, "
          "images_batched, serving_default;") in stdout
  assert sorted(os.listdir(version_dir)) == [
      "assets", "assets.extra", "fingerprint.pb", "saved_model.pb", "variables"]
  record = publish.read_export_config(version_dir)
  assert record["version"] == 1
  assert record["source"]["step"] == 7
  assert record["source"]["metavalid_accuracy"] == 0.625
  assert record["source"]["checkpoint"] == os.path.abspath(prefix)
  assert record["source"]["sha256"] == publish.checkpoint_sha256(prefix)
  assert experiment.RunConfig.from_dict(record["run_config"]) == config
  assert record["model"]["embedding_dim"] == D
  assert record["front_end"]["backbone"]["conv4_channels"] == [8, 8, 16, D]
  assert record["front_end"]["embed_chunk"] == 30  # --embed_chunk (default 32)
  assert record["front_end"]["embed_pad"] is True  # --embed_pad's default
  assert record["jit_compile"] is True  # --jit_compile (default false)


def test_command_line_refuses_the_same_checkpoint_again(command_export):
  _, run_dir, _, base, _ = command_export
  result = _export_command(run_dir, base)
  assert result.returncode != 0
  assert "leo_tf.export: error: Version 1" in result.stderr
  assert "already holds checkpoint" in result.stderr
  assert sorted(os.listdir(base)) == ["1"]


def test_command_line_refuses_a_chunk_without_a_backbone(command_export):
  _, run_dir, _, base, _ = command_export
  for flag in ("--embed_chunk=7", "--noembed_pad"):
    result = _export_command(run_dir, base, flag, "--allow_duplicate")
    assert result.returncode != 0
    assert ("leo_tf.export: error: --embed_chunk and --embed_pad apply to the image signatures "
            "only: give --backbone_dir too, or leave them out.") in result.stderr, flag
  assert sorted(os.listdir(base)) == ["1"]
