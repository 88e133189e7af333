"""Tests for leo_tf.serving.savedmodel: variables tracked once, warmup records."""

import keras
import numpy as np
import tensorflow as tf

from leo_tf.classification.leo import LEO
from leo_tf.core.config import ModelConfig
from leo_tf.serving import savedmodel


def test_served_variables_are_the_tf_variables_the_functions_read():
  model = LEO(ModelConfig(embedding_dim=8, num_latents=2))
  served = savedmodel.served_variables(model)
  assert sorted(served) == ["decoder-w", "encoder-w", "finetuning_lr", "inner_lr",
                            "relation_network-w0", "relation_network-w1", "relation_network-w2"]
  for variable in served.values():
    assert isinstance(variable, tf.Variable) and not isinstance(variable, keras.Variable)
  assert served["encoder-w"] is model.encoder.kernel.value  # the one the traced code reads
  assert served["inner_lr"] is model.inner_lr


def test_warmup_records_round_trip_as_prediction_logs(tmp_path):
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  support = np.arange(6, dtype=np.float32).reshape(2, 1, 3)
  log = savedmodel.prediction_log("generate", {"support": support}, model_name="fewshot")
  path = str(tmp_path / "tf_serving_warmup_requests")
  savedmodel.write_warmup(path, [log, log])
  records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
  assert len(records) == 2
  parsed = prediction_log_pb2.PredictionLog.FromString(records[0])
  request = parsed.predict_log.request
  assert (request.model_spec.name, request.model_spec.signature_name) == ("fewshot", "generate")
  np.testing.assert_array_equal(tf.make_ndarray(request.inputs["support"]), support)
