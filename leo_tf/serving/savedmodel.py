"""What every served learner's SavedModel shares: its variables tracked once, warmup records.

A serving module (serving.classification, serving.regression) tracks the
tf.Variables its signature functions read through `served_variables`, checks
requests with `chain_checks`, and describes TF Serving's warmup requests with
`prediction_log`.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

DEFAULT_MODEL_NAME = "leo"  # the model name in warmup requests (TF Serving's --model_name)
SERVING_SIGNATURE = "serving_default"
SHOWN = 8  # entries of each tensor that a failed check prints: shapes up to rank 8


def chain_checks(checks, *tensors: tf.Tensor) -> tuple[tf.Tensor, ...]:
  """Runs request checks in order inside a signature; returns the tensors, checked.

  Each check is a function of the tensors that returns an op (an Assert); it
  reads the tensors as passed on by the check before it, so its shapes,
  slices and reductions run only on requests that passed the earlier checks
  (tf.shape(s)[2] only on a support of rank 3), and the first problem is the
  one reported. Every later op depends on all of them.
  """
  for check in checks:
    with tf.control_dependencies([check(*tensors)]):
      tensors = tuple(tf.identity(t) for t in tensors)
  return tensors


def tf_variable(variable) -> tf.Variable:
  """The tf.Variable that a Keras 3 variable holds (a tf.Variable is returned as is)."""
  if isinstance(variable, keras.Variable):
    return variable.value  # the backend's tf.Variable, which the traced functions read
  return variable


def served_variables(model) -> dict[str, tf.Variable]:
  """The learner's meta-variables as tf.Variables, keyed by path ("relation_network-w0").

  Why not the learner itself as an attribute of the serving module: tracked
  through its Keras layers, each Keras 3 variable is exported as a new copy of
  the tf.Variable it holds (keras Variable._export_to_saved_model_graph), and
  the SavedModel's saver restores the copy while the functions read the
  original. TF2's Python loader copes, but a TF1-style loader (TF Serving,
  `saved_model_cli run`) leaves the variables the functions read
  uninitialised. Tracking the tf.Variables themselves, as
  keras.export.ExportArchive does, gives one variable each.
  """
  return {getattr(v, "path", v.name.split(":")[0]).replace("/", "-"): tf_variable(v)
          for v in model.meta_variables}


def prediction_log(signature: str, inputs: Mapping[str, np.ndarray],
                   model_name: str = DEFAULT_MODEL_NAME) -> Any:
  """A tensorflow_serving PredictionLog of a PredictRequest to `signature` with `inputs`."""
  try:
    from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Writing TF Serving warmup requests needs tensorflow-serving-api: "
                      "pip install 'tensorflow-serving-api~=2.21.0'.") from e
  request = predict_pb2.PredictRequest(
      model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
  for key, value in inputs.items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
  return prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))


def write_warmup(path: str, logs) -> None:
  """Writes PredictionLog records as TF Serving's warmup file (a TFRecord file)."""
  with tf.io.TFRecordWriter(path) as writer:
    for log in logs:
      writer.write(log.SerializeToString())
