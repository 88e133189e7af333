"""serving.images and the image and batched signatures of serving.classification: stage 1's
preprocessing in the graph, the answers on real Omniglot drawings against stage 1's own
embedding function and serving_default, batched requests answered bit for bit as alone,
probabilities and classes only unless full_outputs, bad image requests with clear messages,
and export/batching_parameters.txt as TF Serving parses it.
"""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2

from leo_tf.images import omniglot
from leo_tf.images import pretrain
from leo_tf.serving import classification
from tests.paths import REPO
from tests.serving.helpers import D, NZ, load_script, task

DATA = os.path.join(REPO, "..", "shared", "data", "omniglot")
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "index.csv")),
                                reason="the shared Omniglot folder is not here")


def _call(loaded, signature, **inputs):
  return {name: value.numpy() for name, value in loaded.signatures[signature](**inputs).items()}


def _png(pixels):
  """uint8 [H, W, C] -> the bytes of a PNG file."""
  return tf.io.encode_png(pixels).numpy()


def _files(pixels):
  """uint8 [..., H, W, C] -> string [...] of PNG files."""
  lead = pixels.shape[:-3]
  flat = pixels.reshape((-1,) + pixels.shape[-3:])
  return np.array([_png(p) for p in flat], dtype=object).reshape(lead)


@pytest.fixture(scope="module")
def drawings():
  """Real Omniglot drawings: 5 characters of the evaluation alphabets x 20 drawers, as the
  shared npz holds them (bool [5, 20, 105, 105], True = background)."""
  index = omniglot.read_index(DATA)
  names = [name for name, (set_name, _, _) in index.items() if set_name == "evaluation"][::97][:5]
  rows = [index[name][1] for name in names]
  with np.load(os.path.join(DATA, omniglot.NPZ_FILES["evaluation"]), allow_pickle=False) as npz:
    return npz["images"][rows]


@needs_data
def test_preprocessing_is_stage_1s_on_real_drawings(drawings):
  # A PNG of a drawing (white background 255, black ink 0) through the serving
  # preprocessing gives exactly what stage 1 feeds its backbone (omniglot.resize).
  flat = drawings.reshape(-1, 105, 105)  # [100, 105, 105]
  pixels = np.where(flat, 255, 0).astype(np.uint8)[..., None]  # [100, 105, 105, 1]
  served = pretrain.preprocess_images(pixels, 28, "omniglot").numpy()
  np.testing.assert_array_equal(served[..., 0], omniglot.resize(flat, 28))
  # Grey levels follow the official PNGs' threshold: <= 127 is ink.
  grey = np.array([[[[0], [127], [128], [255]]]], np.uint8)  # [1, 1, 4, 1]
  np.testing.assert_array_equal(
      pretrain.preprocess_images(grey, 4, "omniglot").numpy()[0, :, :, 0],
      np.repeat([[1.0, 1.0, 0.0, 0.0]], 4, axis=0))
  # A folder of images: pixel / 255, area-averaged (the same resizing as folder_splits).
  folder = pretrain.preprocess_images(grey, 2, "image_dir").numpy()[0, :, :, 0]
  np.testing.assert_allclose(folder, [[127 / 510, 383 / 510]] * 2, rtol=1e-6)


@needs_data
def test_images_answer_as_stage_1_embeddings_sent_to_serving_default(exported, drawings):
  # 5-way 1-shot on drawer 0 of each character, 3 queries of each (drawers 1-3).
  embed_fn = pretrain.make_embed_fn(exported.front_end.backbone)  # stage 1's own function
  stage1 = omniglot.resize(drawings.reshape(-1, 105, 105), 28).reshape(5, 20, 28, 28, 1)
  support_features = embed_fn(stage1[:, :1].reshape(-1, 28, 28, 1), 64).reshape(5, 1, D)
  query_features = embed_fn(stage1[:, 1:4].reshape(-1, 28, 28, 1), 64)  # [15, D]
  want = _call(exported.loaded, "serving_default", support=support_features,
               query=query_features)
  pixels = np.where(drawings, 255, 0).astype(np.uint8)[..., None]  # [5, 20, 105, 105, 1]
  support, query = pixels[:, :1], pixels[:, 1:4].reshape(15, 105, 105, 1)
  for signature, inputs in (
      ("images", {"support_images": support, "query_images": query}),
      ("image_bytes", {"support_image_bytes": _files(support),
                       "query_image_bytes": _files(query)})):
    got = _call(exported.loaded, signature, **inputs)
    assert sorted(got) == ["classes", "probabilities"], signature
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-5)
    np.testing.assert_array_equal(got["classes"], want["classes"])
  # The check can fail: batch norm in training mode (batch statistics) gives other features.
  # (A call in training mode also moves the running statistics of the session's shared
  # backbone, so they are put back after it.)
  backbone = exported.front_end.backbone
  kept = [v.numpy() for v in backbone.variables]
  try:
    training = backbone(stage1[:, 1:4].reshape(-1, 28, 28, 1), training=True)
  finally:
    for v, value in zip(backbone.variables, kept):
      v.assign(value)
  assert np.abs(training.numpy() - query_features).max() > 1e-2
  np.testing.assert_array_equal(embed_fn(stage1[:, 1:4].reshape(-1, 28, 28, 1), 64),
                                query_features)
  # A JPEG is decoded as stage 1 decodes files; its pixels answer as the images signature.
  jpeg = np.array([tf.io.encode_jpeg(p).numpy() for p in query[:3]], dtype=object)
  decoded = np.stack([tf.io.decode_image(j, channels=1).numpy() for j in jpeg])
  np.testing.assert_array_equal(
      _call(exported.loaded, "image_bytes", support_image_bytes=_files(support),
            query_image_bytes=jpeg)["probabilities"],
      _call(exported.loaded, "images", support_images=support,
            query_images=decoded)["probabilities"])


def _pixels(shape, seed):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_batched_requests_answer_each_task_exactly_as_alone(exported):
  # Two requests of 3-way 2-shot tasks with 4 queries (B = 2 and B = 3), concatenated
  # on axis 0 as TF Serving's batcher does: every number equals the one alone. 68 and 102
  # images, so the tasks straddle the backbone's chunks of 32 differently.
  first = (_pixels((2, 3, 2, 40, 30, 1), 0), _pixels((2, 4, 40, 30, 1), 1))
  second = (_pixels((3, 3, 2, 40, 30, 1), 2), _pixels((3, 4, 40, 30, 1), 3))
  requests = {
      "images_batched": [{"support_images": s, "query_images": q} for s, q in (first, second)],
      "image_bytes_batched": [{"support_image_bytes": _files(s), "query_image_bytes": _files(q)}
                              for s, q in (first, second)],
      "embeddings_batched": [
          {"support": np.stack([task(3, 2, 4, seed=10 * b + i)[0] for i in range(b)]),
           "query": np.stack([task(3, 2, 4, seed=10 * b + i)[1] for i in range(b)])}
          for b in (2, 3)],
  }
  for signature, (one, two) in requests.items():
    together = _call(exported.loaded, signature,
                     **{name: np.concatenate([one[name], two[name]]) for name in one})
    alone = [_call(exported.loaded, signature, **request) for request in (one, two)]
    assert sorted(together) == ["classes", "probabilities"]
    assert together["probabilities"].shape == (5, 4, 3)
    for name in together:
      np.testing.assert_array_equal(together[name], np.concatenate([a[name] for a in alone]))
  # Task b of a batch is the single-task signature's answer.
  single = _call(exported.loaded, "images", support_images=second[0][1],
                 query_images=second[1][1])
  batched = _call(exported.loaded, "images_batched", support_images=second[0],
                  query_images=second[1])
  np.testing.assert_array_equal(single["probabilities"], batched["probabilities"][1])
  support, query = requests["embeddings_batched"][0]["support"], requests[
      "embeddings_batched"][0]["query"]
  direct = _call(exported.loaded, "serving_default", support=support[1], query=query[1])
  batched = _call(exported.loaded, "embeddings_batched", support=support, query=query)
  for name in ("probabilities", "classes"):  # and serving_default's, bit for bit
    np.testing.assert_array_equal(batched[name][1], direct[name])


def test_embedding_is_independent_of_the_other_images(exported):
  # FrontEnd.embed: an image's features are the same, bit for bit, whatever images
  # come before it (positions in the chunks of 32 differ) and however many there are.
  pixels = _pixels((70, 28, 28, 1), 4)
  embed = tf.function(exported.front_end.embed)
  alone = embed(pixels[:5]).numpy()
  for offset in (1, 31, 65):
    shifted = embed(np.concatenate([pixels[5:5 + offset], pixels[:5]])).numpy()
    np.testing.assert_array_equal(shifted[offset:], alone)
  # And they are the backbone's features in inference mode (within rounding).
  want = exported.front_end.backbone(
      pretrain.preprocess_images(pixels[:5], 28, "omniglot"), training=False).numpy()
  np.testing.assert_allclose(alone, want, atol=1e-5)


def test_a_chunk_of_the_task_size_pads_nothing_and_answers_alike(exported):
  # FrontEnd(chunk=7), a task of 7 images: behind other whole tasks its images fill a chunk
  # at the same positions, and their features are the same bit for bit; at other positions
  # and beside the default chunk's, the same within rounding (a batch of 7 rounds otherwise).
  pixels = _pixels((40, 28, 28, 1), 5)
  seven = dataclasses.replace(exported.front_end, chunk=7)
  embed = tf.function(seven.embed)
  alone = embed(pixels[:7]).numpy()  # one chunk, no padding
  for offset in (7, 21):  # 1 and 3 tasks before it
    shifted = embed(np.concatenate([pixels[7:7 + offset], pixels[:7]])).numpy()
    np.testing.assert_array_equal(shifted[offset:], alone)
  for offset in (1, 6):
    shifted = embed(np.concatenate([pixels[7:7 + offset], pixels[:7]])).numpy()
    np.testing.assert_allclose(shifted[offset:], alone, rtol=0, atol=1e-4)
  default = tf.function(exported.front_end.embed)(pixels[:7]).numpy()  # padded to 32
  np.testing.assert_allclose(alone, default, atol=1e-5)


def test_without_padding_a_small_request_is_one_call_of_its_own_size(exported):
  # FrontEnd(chunk=64, pad=False): 10 images are one call of 10 (no padding: the features
  # of one tf.function call of the backbone on them, bit for bit); 150 images are calls of
  # 64, 64 and 64 (22 padded); the first 64 as a request of their own; all within rounding
  # of the padded default's.
  pixels = _pixels((150, 28, 28, 1), 6)
  fit = dataclasses.replace(exported.front_end, chunk=64, pad=False)
  embed = tf.function(fit.embed)
  direct = tf.function(lambda x: fit.backbone(fit.preprocess(x), training=False))
  np.testing.assert_array_equal(embed(pixels[:10]).numpy(), direct(pixels[:10]).numpy())
  whole = embed(pixels).numpy()
  assert whole.shape == (150, D)
  np.testing.assert_array_equal(whole[:64], embed(pixels[:64]).numpy())
  default = tf.function(exported.front_end.embed)(pixels).numpy()  # chunks of 32, padded
  np.testing.assert_allclose(whole, default, rtol=0, atol=1e-5)
  np.testing.assert_allclose(embed(pixels[:10]).numpy(), default[:10], rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [0, -3, 4097, 2.5, True, "30"])
def test_a_bad_chunk_is_refused_with_the_fix(exported, chunk):
  with pytest.raises(ValueError, match=r"embed_chunk is .*: the backbone's images per call must "
                     r"be an integer from 1 to 4096; use N K \+ Q of the task shape"):
    dataclasses.replace(exported.front_end, chunk=chunk)


def test_no_queries_give_empty_answers(exported):
  support = _pixels((3, 1, 28, 28, 1), 5)
  got = _call(exported.loaded, "images", support_images=support,
              query_images=np.zeros((0, 28, 28, 1), np.uint8))
  assert got["probabilities"].shape == (0, 3) and got["classes"].shape == (0,)
  got = _call(exported.loaded, "image_bytes_batched", support_image_bytes=_files(support)[None],
              query_image_bytes=np.zeros((1, 0), dtype=object))
  assert got["probabilities"].shape == (1, 0, 3)


def test_full_outputs_add_the_adapted_classifier_and_the_embeddings(exported):
  module = classification.ServingModule(exported.model, exported.front_end, full_outputs=True)
  support, query = _pixels((2, 3, 1, 28, 28, 1), 6), _pixels((2, 4, 28, 28, 1), 7)
  got = {name: value.numpy() for name, value in
         module.images_batched(support_images=support, query_images=query).items()}
  assert sorted(got) == sorted(classification.ANSWERS + classification.ADAPTED
                               + classification.EMBEDDINGS)
  assert got["adapted_latents"].shape == (2, 3, NZ)
  embed_fn = pretrain.make_embed_fn(exported.front_end.backbone)
  stage1 = pretrain.preprocess_images(query[1], 28, "omniglot").numpy()
  np.testing.assert_allclose(got["query_embeddings"][1], embed_fn(stage1, 64), atol=1e-5)
  # The features, sent to serving_default, give the same classifier.
  direct = _call(exported.loaded, "serving_default", support=got["support_embeddings"][1],
                 query=got["query_embeddings"][1])
  np.testing.assert_allclose(got["classifier_weights"][1], direct["classifier_weights"],
                             atol=1e-5)
  np.testing.assert_allclose(got["probabilities"][1], direct["probabilities"], atol=1e-5)


_S = _pixels((3, 2, 28, 28, 1), 8)
_Q = _pixels((4, 28, 28, 1), 9)


@pytest.mark.parametrize("signature, support, query, message", [
    ("images", _S[:, 0], _Q, r"support_images must be rank 5, \[N, K, H, W, C\] with C = 1: .*"
                             r"for one image per class send \[N, 1, H, W, C\]\.\] "
                             r"\[support_images shape:\] \[3 28 28 1\]"),
    ("images", _S, _Q[0], r"query_images must be rank 4, \[Q, H, W, C\] .*\[28 28 1\]"),
    ("images", np.repeat(_S, 3, axis=-1), _Q,
     r"support_images must have C = 1 channels \(1 for grayscale\) as the backbone takes; "
     r"convert the images before sending\.\] \[support_images shape:\] \[3 2 28 28 3\]"),
    ("images", _S, np.repeat(_Q, 3, axis=-1), r"query_images must have C = 1 channels"),
    ("images", _S[:, :0], _Q, r"support_images is empty \(N = 0 classes or K = 0 images"),
    ("images", _S[:0], _Q, r"support_images is empty"),
    ("images", _S[:1], _Q, r"support_images has fewer than 2 classes; a task needs N >= 2"),
    ("images", _S, _Q[:, :20], r"query_images images must have the H and W of the "
                               r"support_images .*\[3 2 28 28 1\] .*\[4 20 28 1\]"),
    ("images", np.zeros((3, 1, 1025, 2, 1), np.uint8), _Q[:, :0],
     r"support_images images must be 1 to 1024 pixels high and wide"),
    ("images_batched", _S, _Q, r"support_images must be rank 6, \[B, N, K, H, W, C\]"),
    ("images_batched", _S[None], np.stack([_Q, _Q]),
     r"support_images and query_images must hold the same number B >= 1 of tasks on axis 0"),
    ("images_batched", _S[None][:0], _Q[None][:0], r"same number B >= 1 of tasks"),
    ("images", np.zeros((501, 1, 2, 2, 1), np.uint8), _Q[:0],
     r"support_images holds more than 500 examples in a task"),
], ids=["support_rank", "query_rank", "support_channels", "query_channels", "no_examples",
        "no_classes", "one_class", "other_size", "too_high", "batched_rank", "batched_b",
        "batched_empty", "too_many_examples"])
def test_bad_image_requests_fail_with_clear_messages(exported, signature, support, query,
                                                     message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    _call(exported.loaded, signature, support_images=support, query_images=query)


def _bad_file(kind):
  png = _png(_S[0, 0])
  return {"text": b"not an image", "empty": b"", "pixels": _S[0, 0].tobytes(),
          "gif": b"GIF89a" + png[6:], "truncated": png[:len(png) // 2],
          "huge": png[:16] + (5000).to_bytes(4, "big") + (28).to_bytes(4, "big") + png[24:]}[kind]


@pytest.mark.parametrize("kind, message", [
    ("text", re.escape("[support_image_bytes[1, 0]] [is not a PNG or JPEG file; send the bytes of "
                       "PNG or JPEG files (REST: {b64: <base64 of the file>}), not pixels and not "
                       "base64 twice. Its first bytes:] [110 111 116 32 97 110 32 105]")),
    ("empty", r"\[support_image_bytes\[1, 0\]\] \[is not a PNG or JPEG file"),
    ("pixels", r"\[support_image_bytes\[1, 0\]\] \[is not a PNG or JPEG file"),
    ("gif", r"\[support_image_bytes\[1, 0\]\] \[is not a PNG or JPEG file"),
    ("huge", r"\[support_image_bytes\[1, 0\]\] \[is an image of 1 to 1024 pixels high and wide"),
    ("truncated", r"decode_image_bytes"),
], ids=["text", "empty", "pixels", "gif", "huge", "truncated"])
def test_undecodable_files_fail_with_clear_messages(exported, kind, message):
  files = _files(_S)
  files[1, 0] = _bad_file(kind)
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    _call(exported.loaded, "image_bytes", support_image_bytes=files, query_image_bytes=_files(_Q))


def test_bad_file_requests_fail_with_clear_messages(exported):
  files, queries = _files(_S), _files(_Q)
  cases = [
      (files[:, 0], queries, r"support_image_bytes must be rank 2, \[N, K\]: one PNG or JPEG"),
      (files, queries[None], r"query_image_bytes must be rank 1, \[Q\]"),
      (files[:, :0], queries, r"support_image_bytes is empty"),
      (files[:1], queries, r"support_image_bytes has fewer than 2 classes"),
      (files, _files(_Q[:, :20]), r"every image of a request must have the same H and W; resize "
                                  r"them to one size before sending.*\[28 28\].*"
                                  r"query_image_bytes\[0\]\] \[is\] \[20 28\]"),
  ]
  for support, query, message in cases:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      _call(exported.loaded, "image_bytes", support_image_bytes=support, query_image_bytes=query)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"support_image_bytes and query_image_bytes must hold the same "
                           r"number B >= 1 of tasks"):
    _call(exported.loaded, "image_bytes_batched", support_image_bytes=files[None],
          query_image_bytes=np.stack([queries, queries]))
  # The batched form names the task too.
  bad = np.stack([files, files])
  bad[1, 2, 1] = b"oops"
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=re.escape("[support_image_bytes[1, 2, 1]] [is not a PNG or JPEG")):
    _call(exported.loaded, "image_bytes_batched", support_image_bytes=bad,
          query_image_bytes=np.stack([queries, queries]))


def test_bad_batched_embeddings_fail_with_clear_messages(exported):
  support, query = task(3, 2, 4, seed=20)
  cases = [
      (support, query[None], rf"support must be rank 4, \[B, N, K, D\] with D = {D}: B tasks of "
                             r"N classes"),
      (support[None], query, r"query must be rank 3, \[B, Q, D\]"),
      (support[None], np.stack([query, query]), r"support and query must hold the same number "
                                                r"B >= 1 of tasks on axis 0"),
      (support[None, :1], query[None], r"support has fewer than 2 classes"),
      # 501 examples: the relation network's pairs grow as (N K)^2 (10,000 would need GBs).
      (np.ones((1, 167, 3, D), np.float32), query[None],
       r"support holds more than 500 examples in a task \(N K; the relation network compares "
       r"every pair\); send fewer classes or fewer examples per class\. \[N K\]:\] \[167 3\]"),
      (np.where(np.arange(D) == 3, np.nan, support)[None].astype(np.float32), query[None],
       r"support contains NaN or Inf"),
      (support[None], np.where(np.arange(D) == 3, np.inf, query)[None].astype(np.float32),
       r"query contains NaN or Inf"),
  ]
  for s, q, message in cases:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      _call(exported.loaded, "embeddings_batched", support=s, query=q)


def _batching_parameters_class():
  """TF Serving's BatchingParameters message (session_bundle_config.proto), which the
  tensorflow-serving-api wheel does not ship: its fields, names and types as there."""
  fields = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(
      name="leo_test_batching.proto", package="leo_test",
      dependency=["google/protobuf/wrappers.proto"])
  message = proto.message_type.add(name="BatchingParameters")
  for number, (name, kind) in enumerate([
      ("max_batch_size", ".google.protobuf.Int64Value"),
      ("batch_timeout_micros", ".google.protobuf.Int64Value"),
      ("max_enqueued_batches", ".google.protobuf.Int64Value"),
      ("num_batch_threads", ".google.protobuf.Int64Value"),
      ("thread_pool_name", ".google.protobuf.StringValue")], start=1):
    message.field.add(name=name, number=number, type=fields.TYPE_MESSAGE, type_name=kind,
                      label=fields.LABEL_OPTIONAL)
  message.field.add(name="allowed_batch_sizes", number=6, type=fields.TYPE_INT64,
                    label=fields.LABEL_REPEATED)
  message.field.add(name="pad_variable_length_inputs", number=7, type=fields.TYPE_BOOL,
                    label=fields.LABEL_OPTIONAL)
  pool = descriptor_pool.DescriptorPool()
  pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("leo_test.BatchingParameters"))


def test_batching_parameters_parse_as_tf_serving_reads_them():
  with open(os.path.join(REPO, "export", "batching_parameters.txt")) as f:
    parameters = text_format.Parse(f.read(), _batching_parameters_class()())
  assert parameters.max_batch_size.value == 32
  assert parameters.batch_timeout_micros.value == 2000
  assert parameters.num_batch_threads.value == 2
  assert not parameters.pad_variable_length_inputs
  with pytest.raises(text_format.ParseError):  # the parse does check the names
    text_format.Parse("max_batchsize { value: 32 }", _batching_parameters_class()())


@needs_data
def test_folder_of_pngs_to_rest_body_to_answer(exported, tmp_path):
  # export/make_image_request.py writes a task folder of real drawings and its REST body;
  # export/rest_answer.py answers the body as TF Serving's REST API would.
  make_image_request = load_script("make_image_request")
  rest_answer = load_script("rest_answer")
  folder = str(tmp_path / "drawings")
  names = make_image_request.write_omniglot_example(DATA, folder, num_classes=3, num_queries=2)
  classes, support, query_names, query = make_image_request.read_task(folder)
  assert classes == sorted(names) and len(query) == 6 and len(support[0]) == 1
  assert query_names[0].startswith(classes[0]) and query_names[0].endswith("_02.png")
  # The PNG writer's files decode to the drawings' pixels.
  pixels = np.stack([tf.io.decode_png(files[0]).numpy() for files in support])  # [3, 105, 105, 1]
  assert pixels.shape == (3, 105, 105, 1) and set(np.unique(pixels)) == {0, 255}
  queries = np.stack([tf.io.decode_png(f).numpy() for f in query])
  direct = _call(exported.loaded, "images", support_images=pixels[:, None], query_images=queries)
  for signature in ("image_bytes", "image_bytes_batched"):
    body = json.loads(json.dumps(make_image_request.rest_request(support, query, signature)))
    response = rest_answer.answer(exported.loaded, body)
    if signature == "image_bytes":
      got = response["outputs"]
    else:
      (got,) = response["predictions"]  # one instance: one task
    np.testing.assert_array_equal(np.asarray(got["probabilities"], np.float32),
                                  direct["probabilities"])
    np.testing.assert_array_equal(got["classes"], direct["classes"])
  lines = rest_answer.describe(folder, response["predictions"][0]).splitlines()
  assert lines[0] == (f"{query_names[0]}: {classes[direct['classes'][0]]} (probability "
                      f"{direct['probabilities'][0, direct['classes'][0]]:.3f})")
  truth = np.repeat(np.arange(3), 2)  # queries <class>_02.png, <class>_03.png in class order
  assert lines[-1] == (f"{np.sum(direct['classes'] == truth)} of 6 queries classified as the "
                       "class their file name starts with")
  # A bad body is TF Serving's InvalidArgument.
  body = make_image_request.rest_request(support[:1], query)
  with pytest.raises(tf.errors.InvalidArgumentError, match="fewer than 2 classes"):
    rest_answer.answer(exported.loaded, body)
