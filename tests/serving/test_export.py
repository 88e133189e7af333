"""serving.export: export_checkpoint refuses a checkpoint of another model, exports a run
that classification.experiment.train wrote, and the TF Serving models.config of export/
parses for the exported layout.
"""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from leo_tf.classification import experiment
from leo_tf.classification.leo import LEO
from leo_tf.core.config import DataConfig, ModelConfig, OuterConfig
from leo_tf.data import atomic
from leo_tf.data import synthetic
from leo_tf.outer import checkpoints
from leo_tf.serving import export
from leo_tf.serving import publish
from tests.paths import REPO
from tests.serving.helpers import D, NZ, call, reference, run_config, task


def _partial_checkpoint(config, path):
  """A checkpoint whose model lacks the relation network."""
  model = LEO(config.model)
  partial = tf.Module()
  partial.encoder, partial.decoder = model.encoder, model.decoder
  partial.inner_lr, partial.finetuning_lr = model.inner_lr, model.finetuning_lr
  return tf.train.Checkpoint(model=partial).write(path)


@pytest.mark.parametrize("case, message", [
    ("other_sizes", r"does not hold the model .*incompatible tensor with shape \(8, 64\)"),
    ("missing_variables", r"does not hold the model .*not in the checkpoint: .*relation_network/w"),
], ids=["other_sizes", "missing_variables"])
def test_checkpoint_of_another_model_is_refused(exported, tmp_path, case, message):
  run_dir = str(tmp_path / "run")
  config = run_config(run_dir)
  if case == "other_sizes":
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, num_latents=4))
    checkpoint = exported.prefix
  else:
    checkpoint = _partial_checkpoint(config, str(tmp_path / "partial" / "ckpt-1"))
  atomic.write_json_atomically(os.path.join(run_dir, "config.json"), config.to_dict())
  with pytest.raises(ValueError, match=message):
    export.export_checkpoint(run_dir, str(tmp_path / "leo"), checkpoint=checkpoint)
  assert publish.versions(str(tmp_path / "leo")) == []


def test_models_config_parses_for_the_exported_layout():
  with open(os.path.join(REPO, "export", "models.config")) as f:
    config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  assert (model.name, model.base_path, model.model_platform) == ("leo", "/models/leo",
                                                                 "tensorflow")
  assert model.model_version_policy.latest.num_versions == 1


def test_export_of_a_run_that_train_wrote(tmp_path):
  data_path = str(tmp_path / "embeddings")
  synthetic.generate(synthetic.SyntheticConfig(
      num_train_classes=8, num_val_classes=6, num_test_classes=6, images_per_class=30,
      embedding_dim=D, signal_dim=8, nuisance_dim=8), data_path, num_eval_tasks=10)
  run_dir = str(tmp_path / "run")
  config = experiment.RunConfig(
      model=ModelConfig(embedding_dim=D, num_latents=NZ, inner_unroll_length=2,
                        finetuning_unroll_length=2),
      data=DataConfig(data_path=data_path, dataset_name="synthetic",
                      num_val_examples_per_class=5),
      outer=OuterConfig(num_steps_limit=4, checkpoint_steps=2, num_metavalid_tasks=10,
                        num_metatest_tasks=10, metatrain_batch_size=2, checkpoint_path=run_dir,
                        jit_compile=False),
      progress=False)
  experiment.train(config)
  version_dir = export.export_checkpoint(run_dir, str(tmp_path / "leo"))
  prefix, record = checkpoints.best_checkpoint(run_dir)
  source = publish.read_export_config(version_dir)["source"]
  assert (source["checkpoint"], source["step"]) == (os.path.abspath(prefix), record["step"])
  model = LEO(config.model)
  tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
  support, query = task(5, 1, 10, seed=16)
  served = call(tf.saved_model.load(version_dir), "serving_default", support, query)
  want = reference(model, support, query, num_val=2)
  np.testing.assert_allclose(served["probabilities"], want["probabilities"], atol=1e-5)
