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


OMNIGLOT = os.path.join(REPO, "..", "shared", "data", "omniglot")
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(OMNIGLOT, "index.csv")),
                                reason="the shared Omniglot folder is not here")


@pytest.fixture(scope="module")
def drawings():
  """Real Omniglot drawings uint8 [7 characters, 3 drawers, 105, 105, 1]: 0 ink on 255, as
  the official PNGs (images_evaluation.npz, rows 0, 90, ..., 540; drawers 0, 1, 2)."""
  with np.load(os.path.join(OMNIGLOT, "images_evaluation.npz"), allow_pickle=False) as data:
    picked = data["images"][0:630:90, :3]  # bool [7, 3, 105, 105], True = background
  return np.where(picked, 255, 0).astype(np.uint8)[..., None]


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
  cut = tf.make_tensor_proto(support).SerializeToString()[:-4]  # the message cut short
  with pytest.raises(client.LoaderError, match="support is not a readable TensorProto"):
    loader.run("generate", {"support": cut, "query": query})
  short = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum,  # 2 of the 64 floats
                                 tensor_shape=tf.TensorShape(support.shape).as_proto(),
                                 tensor_content=support.ravel()[:2].tobytes())
  with pytest.raises(client.LoaderError, match="support: tensor_content does not hold one "
                     "value per element") as error:
    loader.run("generate", {"support": short.SerializeToString(), "query": query})
  assert error.value.code == "INVALID_ARGUMENT"


def test_a_folder_without_a_savedmodel_is_refused_at_start(leo_serve, tmp_path):
  with pytest.raises(client.LoaderError) as error:
    client.Loader(leo_serve, str(tmp_path))
  assert "cannot load the SavedModel" in str(error.value)


def omniglot_task(drawings, num_classes):
  """A task from the drawings: drawer 0 of each character the support, drawers 1 and 2
  the queries (uint8 [N, 1, 105, 105, 1] and [2 N, 105, 105, 1])."""
  support = drawings[:num_classes, :1]  # [N, 1, 105, 105, 1]
  query = drawings[:num_classes, 1:].reshape(-1, 105, 105, 1)  # [2 N, 105, 105, 1]
  return support, query


@needs_data
def test_image_answers_on_omniglot_drawings_equal_the_python_model(loader, exported, drawings):
  from leo_tf.images import pretrain  # pylint: disable=g-import-not-at-top
  support, query = omniglot_task(drawings, 5)
  inputs = {"support_images": support, "query_images": query}
  got = loader.run("images", inputs)
  assert_same_outputs(got, python_call(exported.loaded, "images", inputs))
  # Stage 1's own embedding function on the same drawings, sent as embeddings.
  embed = pretrain.make_embed_fn(exported.front_end.backbone)
  pixels = exported.front_end.preprocess(np.concatenate([support.reshape(-1, 105, 105, 1),
                                                         query]))  # [15, 28, 28, 1]
  features = embed(pixels.numpy(), 8)  # [N K + Q, D]
  by_embeddings = loader.run("serving_default", {
      "support": features[:5].reshape(5, 1, -1), "query": features[5:]})
  np.testing.assert_allclose(got["probabilities"], by_embeddings["probabilities"], atol=1e-5)
  np.testing.assert_array_equal(got["classes"], by_embeddings["classes"])
  assert len(set(got["classes"].tolist())) > 1  # not one class for everything


@needs_data
def test_png_files_and_batched_tasks_on_omniglot_drawings(loader, exported, drawings):
  support, query = omniglot_task(drawings, 5)
  alone = loader.run("images", {"support_images": support, "query_images": query})
  png = np.vectorize(lambda i: tf.io.encode_png(i).numpy(), otypes=[object],
                     signature="(h,w,c)->()")
  files = {"support_image_bytes": png(support), "query_image_bytes": png(query)}  # [N, 1], [Q]
  got = loader.run("image_bytes", files)
  assert_same_outputs(got, python_call(exported.loaded, "image_bytes", files))
  assert_same_outputs(got, alone)
  # Two tasks on axis 0 (the second: other characters): each answered as alone (within
  # float32 rounding: TensorFlow's kernels round differently for B = 1 and B = 2).
  other_support, other_query = omniglot_task(drawings[4:], 3)
  other_support = np.concatenate([other_support, other_support[:2]])  # [5, 1, ...]: same N
  other_query = np.concatenate([other_query, other_query[:4]])  # [10, ...]: same Q
  batched = {"support_images": np.stack([support, other_support]),
             "query_images": np.stack([query, other_query])}  # [2, N, 1, ...], [2, Q, ...]
  got = loader.run("images_batched", batched)
  assert_same_outputs(got, python_call(exported.loaded, "images_batched", batched))
  second = loader.run("images", {"support_images": other_support, "query_images": other_query})
  for b, task in enumerate((alone, second)):
    np.testing.assert_allclose(got["probabilities"][b], task["probabilities"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got["classes"][b], task["classes"])


@needs_data
def test_bad_image_requests_are_invalid_argument_and_the_next_is_answered(loader, drawings):
  support, query = omniglot_task(drawings, 5)
  good = {"support_images": support, "query_images": query}
  expected = loader.run("images", good)
  bad = [
      ({"support_images": support[:, 0], "query_images": query}, "images", "must be rank 5"),
      ({"support_images": np.repeat(support, 3, axis=-1), "query_images": query}, "images",
       "must have C = 1 channels"),
      ({"support_images": support, "query_images": query[:, :50, :50]}, "images",
       "must have the H and W of the support_images"),
      ({"support_images": support[:1], "query_images": query}, "images", "fewer than 2 classes"),
      ({"support_image_bytes": np.array([[b"GIF89a"], [b"x"]], dtype=object),
        "query_image_bytes": np.array([], dtype=object)}, "image_bytes", "not a PNG or JPEG"),
  ]
  for inputs, signature, message in bad:
    with pytest.raises(client.LoaderError, match=message) as error:
      loader.run(signature, inputs)
    assert error.value.code == "INVALID_ARGUMENT", (message, error.value)
    assert_same_outputs(loader.run("images", good), expected)


@needs_data
def test_an_xla_export_runs_in_the_c_loader_as_in_python(leo_serve, xla_exported, drawings):
  # export(jit_compile=True): TensorFlow's C API compiles and runs the XLA functions as the
  # Python loader does (TF Serving needs --xla_cpu_compilation_enabled=true for them).
  version_dir, loaded = xla_exported
  support, query = omniglot_task(drawings, 5)
  with client.Loader(leo_serve, version_dir) as process:
    for signature, inputs in (
        ("images", {"support_images": support, "query_images": query}),
        ("images_batched", {"support_images": support[None], "query_images": query[None]}),
        ("serving_default", dict(zip(("support", "query"), helpers.task(4, 3, 7, seed=3))))):
      assert_same_outputs(process.run(signature, inputs), python_call(loaded, signature, inputs))
    with pytest.raises(client.LoaderError, match="fewer than 2 classes") as error:
      process.run("images", {"support_images": support[:1], "query_images": query})
    assert error.value.code == "INVALID_ARGUMENT"
    replies = process.warmup()
    assert len(replies) == len(read_warmup(version_dir))
    assert not [got for _, got in replies if isinstance(got, client.LoaderError)]
