"""Fixtures of the serving tests: one classification export, with a small stage-1 backbone for
the image signatures, shared by the session's tests."""

import dataclasses
import os

import pytest
import tensorflow as tf

from leo_tf.classification import experiment
from leo_tf.classification.leo import LEO
from leo_tf.data import atomic
from leo_tf.images import pretrain
from leo_tf.serving import export
from leo_tf.serving import images
from tests.serving import helpers


@dataclasses.dataclass(frozen=True)
class Exported:
  config: experiment.RunConfig
  run_dir: str
  prefix: str
  base: str
  version_dir: str
  model: LEO  # restored from the checkpoint, as classification.experiment.evaluate does
  loaded: object  # tf.saved_model.load of the version
  front_end: images.FrontEnd  # the backbone exported with it (the in-memory one)
  backbone_dir: str  # where it was written as stage 1 writes its backbone


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
  """A run folder (config.json, best checkpoint at step 7) exported as version 1, with a
  small stage-1 backbone (helpers.write_backbone) for the image signatures."""
  run_dir = str(tmp_path_factory.mktemp("run"))
  base = os.path.join(str(tmp_path_factory.mktemp("models")), "leo")
  config = helpers.run_config(run_dir)
  atomic.write_json_atomically(os.path.join(run_dir, "config.json"), config.to_dict())
  run = helpers.trained_run(config, seed=0)
  run.step.assign(7)
  prefix = run.save_best(0.625)
  backbone_dir = helpers.write_backbone(str(tmp_path_factory.mktemp("stage1")))
  front_end = images.FrontEnd(*pretrain.load_embedding_function(backbone_dir))
  version_dir = export.export_checkpoint(run_dir, base, front_end=front_end)
  assert version_dir == os.path.join(base, "1")
  model = LEO(config.model)
  tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
  return Exported(config, run_dir, prefix, base, version_dir, model,
                  tf.saved_model.load(version_dir), front_end, backbone_dir)


@pytest.fixture(scope="session")
def xla_exported(exported, tmp_path_factory):
  """The same checkpoint and backbone exported with jit_compile=True: (version folder, loaded)."""
  base = os.path.join(str(tmp_path_factory.mktemp("models_xla")), "leo")
  version_dir = export.export_checkpoint(exported.run_dir, base, front_end=exported.front_end,
                                         jit_compile=True)
  return version_dir, tf.saved_model.load(version_dir)
