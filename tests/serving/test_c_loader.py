"""Tests for export/c_loader: the SavedModel loaded and run by TensorFlow's C API (leo_serve),
outside Python, as TF Serving's C++ loader does.

leo_serve is built once per session with the system C compiler (build.sh); where
there is none the build fails with the message that says how to get one (CI runs as
root: apt-get install build-essential). Each test talks to one leo_serve process
through export/c_loader/client.py.
"""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.paths import REPO
from tests.serving import helpers

_spec = importlib.util.spec_from_file_location(
    "c_loader_client", os.path.join(REPO, "export", "c_loader", "client.py"))
client = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(client)


@pytest.fixture(scope="session")
def leo_serve(tmp_path_factory):
  """The built leo_serve binary (compiled once per session)."""
  output = str(tmp_path_factory.mktemp("c_loader") / "leo_serve")
  try:
    return client.build(output)
  except client.BuildError as e:
    pytest.fail(f"leo_serve does not build: {e}")


@pytest.fixture(scope="module")
def loader(leo_serve, exported):
  """One leo_serve process serving the small classification export (D = 32)."""
  with client.Loader(leo_serve, exported.version_dir) as process:
    yield process


def read_warmup(version_dir):
  """The export's warmup records: (signature, {input: array}) each, in file order."""
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
  records = []
  for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
    request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
    records.append((request.model_spec.signature_name or "serving_default",
                    {key: tf.make_ndarray(value) for key, value in request.inputs.items()}))
  return records


def python_call(loaded, signature, inputs):
  """The signature called through TensorFlow's Python runtime: outputs as arrays."""
  outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
  return {name: value.numpy() for name, value in outputs.items()}


def assert_same_outputs(got, expected, atol=1e-6):
  assert sorted(got) == sorted(expected)
  for name, value in expected.items():
    assert got[name].dtype == value.dtype, name
    assert got[name].shape == value.shape, name
    np.testing.assert_allclose(got[name], value, rtol=0, atol=atol, err_msg=name)


def test_build_without_a_compiler_says_how_to_get_one(tmp_path, monkeypatch):
  monkeypatch.setenv("CC", "no-such-cc")
  with pytest.raises(client.BuildError, match="apt-get install -y build-essential"):
    client.build(str(tmp_path / "leo_serve"))
  assert not os.path.exists(tmp_path / "leo_serve")


def test_lists_the_signatures_of_the_metagraph(loader, exported):
  found = loader.signatures()
  for name, function in exported.loaded.signatures.items():
    inputs = function.structured_input_signature[1]  # {key: TensorSpec}
    assert found[name]["inputs"] == {k: spec.dtype.name for k, spec in inputs.items()}
    assert found[name]["outputs"] == {k: spec.dtype.name
                                      for k, spec in function.structured_outputs.items()}


@pytest.mark.parametrize("signature", ["serving_default", "generate"])
def test_answers_equal_the_python_model(loader, exported, signature):
  support, query = helpers.task(4, 3, 7, seed=3)  # N = 4, K = 3, Q = 7
  inputs = {"support": support, "query": query}
  got = loader.run(signature, inputs)
  assert_same_outputs(got, python_call(exported.loaded, signature, inputs))
  # And the in-memory LEO's answer (queries grouped 7 / ... : reference takes V per class).
  support, query = helpers.task(4, 3, 8, seed=4)
  expected = helpers.reference(exported.model, support, query, num_val=2)
  got = loader.run("serving_default", {"support": support, "query": query})
  np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-5)
  np.testing.assert_array_equal(got["classes"], expected["classes"])


def test_only_the_outputs_asked_for(loader, exported):
  support, query = helpers.task(2, 1, 3, seed=5)
  got = loader.run("serving_default", {"support": support, "query": query},
                   outputs=["classes", "probabilities"])
  assert sorted(got) == ["classes", "probabilities"]
  with pytest.raises(client.LoaderError, match="has no output logits"):
    loader.run("serving_default", {"support": support, "query": query}, outputs=["logits"])


def test_every_warmup_record_replays(loader, exported):
  records = read_warmup(exported.version_dir)
  assert len(records) >= 4  # both signatures, 5-way 1-shot and 5-shot
  replies = loader.warmup()
  assert [signature for signature, _ in replies] == [signature for signature, _ in records]
  for (signature, inputs), (_, got) in zip(records, replies):
    assert not isinstance(got, client.LoaderError), got
    assert_same_outputs(got, python_call(exported.loaded, signature, inputs))


def test_a_damaged_warmup_file_is_data_loss_after_the_whole_records(loader, exported, tmp_path):
  path = os.path.join(exported.version_dir, "assets.extra", "tf_serving_warmup_requests")
  data = open(path, "rb").read()
  records = read_warmup(exported.version_dir)
  damaged = tmp_path / "damaged"
  # The first record whole, then the second with one byte of its data flipped.
  first_length = int.from_bytes(data[:8], "little")
  second = 12 + first_length + 4
  corrupt = bytearray(data)
  corrupt[second + 12 + 5] ^= 0xFF
  damaged.write_bytes(bytes(corrupt))
  with pytest.raises(client.LoaderError, match="damaged after 1 records") as error:
    loader.warmup(str(damaged))
  assert error.value.code == "DATA_LOSS"
  assert len(records) > 1
  with pytest.raises(client.LoaderError, match="cannot read the warmup file") as error:
    loader.warmup(str(tmp_path / "missing"))
  assert error.value.code == "NOT_FOUND"


def test_bad_requests_are_invalid_argument_and_the_next_request_is_answered(loader, exported):
  support, query = helpers.task(3, 2, 4, seed=6)
  nan_query = query.copy()
  nan_query[1, 3] = np.nan
  bad = [
      ({"support": support[:, 0], "query": query}, "support must be rank 3"),  # [N, D]
      ({"support": support[:1], "query": query}, "fewer than 2 classes"),  # N = 1
      ({"support": support[:, :0], "query": query}, "support is empty"),  # K = 0
      ({"support": support, "query": nan_query}, "query contains NaN or Inf"),
      ({"support": support.astype(np.float64), "query": query}, "float"),  # wrong dtype
      ({"support": support}, "takes 2 inputs, got 1"),  # query missing
      ({"support": support, "queries": query}, "needs input query"),  # misspelt
      ({"support": b"\x0a\x05", "query": query}, "not a readable TensorProto"),
  ]
  pid = loader.process.pid
  expected = python_call(exported.loaded, "serving_default", {"support": support, "query": query})
  for inputs, message in bad:
    with pytest.raises(client.LoaderError, match=message) as error:
      loader.run("serving_default", inputs)
    assert error.value.code == "INVALID_ARGUMENT", (message, error.value)
    # The same process answers the next, good request, and answers it right.
    got = loader.run("serving_default", {"support": support, "query": query})
    assert_same_outputs(got, expected)
  assert loader.process.pid == pid and loader.process.poll() is None
  with pytest.raises(client.LoaderError, match="no signature classify") as error:
    loader.run("classify", {"support": support, "query": query})
  assert error.value.code == "INVALID_ARGUMENT"


def test_tensor_proto_forms_that_clients_send(loader, exported):
  # gRPC clients may fill float_val instead of tensor_content, and a single value
  # stands for all the elements (TensorFlow's own reading of a TensorProto).
  from tensorflow.core.framework import tensor_pb2  # pylint: disable=g-import-not-at-top
  support, query = helpers.task(2, 1, 3, seed=7)
  proto = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum,
                                 tensor_shape=tf.TensorShape(support.shape).as_proto())
  proto.float_val.extend(support.ravel().tolist())
  got = loader.run("generate", {"support": proto.SerializeToString(), "query": query})
  expected = python_call(exported.loaded, "generate", {"support": support, "query": query})
  assert_same_outputs(got, expected)
  splat = tf.make_tensor_proto(0.5, shape=query.shape)  # one float_val for [Q, D]
  got = loader.run("generate", {"support": support, "query": splat.SerializeToString()})
  expected = python_call(exported.loaded, "generate",
                         {"support": support, "query": np.full(query.shape, 0.5, np.float32)})
  assert_same_outputs(got, expected)
  short = tf.make_tensor_proto(support).SerializeToString()[:-4]  # tensor_content cut short
  with pytest.raises(client.LoaderError, match="not a readable TensorProto|tensor_content"):
    loader.run("generate", {"support": short, "query": query})


def test_a_folder_without_a_savedmodel_is_refused_at_start(leo_serve, tmp_path):
  with pytest.raises(client.LoaderError) as error:
    client.Loader(leo_serve, str(tmp_path))
  assert "cannot load the SavedModel" in str(error.value)
