"""Fuzzed serving requests (issue 18, item 6): at least 500 random malformed requests to every
classification signature of a loaded export, with Hypothesis (seeded: derandomize; bounded:
no shrinking, a deadline per request). Wrong ranks, axes and channels, other dtypes, empty
and huge (N or Q up to 10,000) tensors, NaN, Inf and zeros, corrupt, truncated, bit-flipped and
mixed-size files: each request is answered (well-formed outputs) or refused with
InvalidArgument; the process then still answers a good request as before.

Requests go in as TF Serving gives them to the model: through TensorProtos (the wire), with a
dtype that differs from the signature's refused as TF Serving's session refuses it
(InvalidArgument "Expects arg ... to be ... but ... is provided"), counted apart. The outcome
counts are printed (run with -s to see them).
"""

import collections
import datetime
import time

import hypothesis
from hypothesis import strategies as st
import numpy as np
import tensorflow as tf

from tests.serving.helpers import D

NUM_REQUESTS = 520
SIGNATURES = ("serving_default", "generate", "embeddings_batched", "images", "images_batched",
              "image_bytes", "image_bytes_batched")
_INPUTS = {"serving_default": ("support", "query"), "generate": ("support", "query"),
           "embeddings_batched": ("support", "query"),
           "images": ("support_images", "query_images"),
           "images_batched": ("support_images", "query_images"),
           "image_bytes": ("support_image_bytes", "query_image_bytes"),
           "image_bytes_batched": ("support_image_bytes", "query_image_bytes")}
_DTYPES = (np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, object)
_SIZES = (0, 1, 2, 3, 5, 10_000)  # a dimension: mostly small, sometimes empty or huge


def _png_pool():
  """Encoded files to build requests from: PNGs of 28x28 and 20x28, a JPEG, an RGB PNG."""
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
  pool = [tf.io.encode_png(p).numpy() for p in pixels]
  other_size = tf.io.encode_png(pixels[0, :20]).numpy()
  jpeg = tf.io.encode_jpeg(pixels[1]).numpy()
  rgb = tf.io.encode_png(np.repeat(pixels[2], 3, axis=-1)).numpy()
  return pool, other_size, jpeg, rgb


@st.composite
def requests(draw, pool):
  """(signature, {input: array}): a request, possibly malformed in several ways at once."""
  files, other_size, jpeg, rgb = pool
  signature = draw(st.sampled_from(SIGNATURES))
  batched = signature.endswith("_batched")
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  size = lambda: draw(st.sampled_from(_SIZES))  # pylint: disable=unnecessary-lambda-assignment
  kind = ("bytes" if signature.startswith("image_bytes") else
          "images" if signature.startswith("images") else "embeddings")
  b = [draw(st.sampled_from((0, 1, 2, 3)))] if batched else []
  n, k, q = draw(st.sampled_from((2, 3, 5))), draw(st.sampled_from((1, 2))), size()
  if kind != "embeddings" and q > 5:  # 10,000 query images: N only, to keep the test fast
    q = 5
  if draw(st.booleans()):  # another N, K or Q, possibly 0, 1 or 10,000
    n, k = (size(), k) if draw(st.booleans()) else (n, size())
  if np.prod([n, k]) > 10_000:
    k = 1
  image = draw(st.sampled_from(((28, 28), (28, 28), (40, 30), (1, 1), (0, 5))))
  channels = draw(st.sampled_from((1, 1, 1, 3)))
  if kind == "embeddings":
    trailing = (draw(st.sampled_from((D, D, D, D - 1, 1, 0))),)
    shapes = [b + [n, k] + list(trailing), b + [q] + list(trailing)]
  elif kind == "images":
    shapes = [b + [n, k, *image, channels], b + [q, *image, channels]]
  else:
    shapes = [b + [n, k], b + [q]]
  mutation = draw(st.sampled_from(("none", "drop_axis", "add_axis", "swap", "other_b")))
  which = draw(st.integers(0, 1))
  if mutation == "drop_axis" and shapes[which]:
    del shapes[which][draw(st.integers(0, len(shapes[which]) - 1))]
  elif mutation == "add_axis":
    shapes[which].insert(draw(st.integers(0, len(shapes[which]))), draw(st.sampled_from((1, 2))))
  elif mutation == "swap":
    shapes = shapes[::-1]
  elif mutation == "other_b" and batched and shapes[1]:
    shapes[1][0] += 1
  if np.prod(shapes[0]) > 2_000_000 or np.prod(shapes[1]) > 2_000_000:  # memory of the test
    shapes = [[min(d, 3) for d in shape] for shape in shapes]
  arrays = []
  for shape in shapes:
    if kind == "embeddings":
      value = rng.standard_normal(shape).astype(np.float32)
      poison = draw(st.sampled_from(("none", "none", "nan", "inf", "-inf", "zero", "huge")))
      if value.size and poison != "none":
        flat = value.reshape(-1)
        at = rng.integers(0, flat.size, draw(st.sampled_from((1, flat.size))))
        flat[at] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "zero": 0.0,
                    "huge": 3e38}[poison]
    elif kind == "images":
      value = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
      value = np.empty(shape, dtype=object)
      flat = value.reshape(-1)
      for i in range(flat.size):
        flat[i] = files[rng.integers(0, len(files))]
      corruption = draw(st.sampled_from(("none", "none", "random", "truncate", "flip", "insert",
                                         "delete", "other_size", "jpeg", "rgb", "empty")))
      if flat.size and corruption != "none":
        i = int(rng.integers(0, flat.size))
        data = bytearray(flat[i])
        at = int(rng.integers(0, len(data)))
        if corruption == "random":
          data = bytearray(rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes())
        elif corruption == "truncate":
          data = data[:at]
        elif corruption == "flip":
          data[at] ^= 1 << int(rng.integers(0, 8))
        elif corruption == "insert":
          data[at:at] = b"\x00\xff"
        elif corruption == "delete":
          del data[at:at + 4]
        elif corruption == "empty":
          data = bytearray()
        flat[i] = {"other_size": other_size, "jpeg": jpeg, "rgb": rgb}.get(corruption,
                                                                          bytes(data))
    dtype = draw(st.sampled_from((None,) * 24 + _DTYPES))
    if dtype is not None and value.dtype != object and dtype is not object:
      with np.errstate(all="ignore"):
        value = value.astype(dtype)
    elif dtype is object and value.dtype != object:
      value = np.full(value.shape, b"x", dtype=object)
    elif dtype is not None and dtype is not object and value.dtype == object:
      value = np.zeros(value.shape, dtype)
    arrays.append(value)
  return signature, dict(zip(_INPUTS[signature], arrays))


def serve(loaded, signature, inputs):
  """The request as TF Serving runs it: TensorProtos decoded, the dtype checked by the
  session, then the signature. Returns its outputs as arrays."""
  function = loaded.signatures[signature]
  specs = function.structured_input_signature[1]
  feeds = {}
  for name, value in inputs.items():
    tensor = tf.make_ndarray(tf.make_tensor_proto(value))  # the wire
    want = specs[name].dtype
    got = tf.as_dtype(tensor.dtype) if tensor.dtype != object else tf.string
    if got != want:
      raise tf.errors.InvalidArgumentError(
          None, None, f"Expects arg {name} to be {want.name} but {got.name} is provided")
    feeds[name] = tf.constant(tensor, dtype=want)
  return {name: value.numpy() for name, value in function(**feeds).items()}


def _check_answer(signature, inputs, outputs):
  """A well-formed answer: probabilities [(B,) Q, N], rows summing to 1; classes their argmax."""
  probabilities, classes = outputs["probabilities"], outputs["classes"]
  support = inputs[_INPUTS[signature][0]]
  batched = signature.endswith("_batched")
  n = support.shape[1 if batched else 0]
  assert probabilities.shape[-1] == n and probabilities.shape[:-1] == classes.shape
  assert np.all(np.isfinite(probabilities))
  np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
  if probabilities.size:
    np.testing.assert_array_equal(classes, probabilities.argmax(axis=-1))


def test_fuzzed_requests_are_answered_or_refused(exported):
  loaded = exported.loaded
  rng = np.random.default_rng(1)
  good = {"support": rng.standard_normal((3, 2, D)).astype(np.float32),
          "query": rng.standard_normal((4, D)).astype(np.float32)}
  good_images = {"support_images": rng.integers(0, 256, (3, 1, 28, 28, 1), dtype=np.uint8),
                 "query_images": rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)}
  before = serve(loaded, "serving_default", good), serve(loaded, "images", good_images)
  counts, seconds = collections.Counter(), collections.Counter()
  t0 = time.time()

  @hypothesis.settings(max_examples=NUM_REQUESTS, derandomize=True, database=None,
                       deadline=datetime.timedelta(seconds=60),
                       phases=[hypothesis.Phase.generate],
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(requests(_png_pool()))
  def one_request(request):
    signature, inputs = request
    start = time.time()
    try:
      outputs = serve(loaded, signature, inputs)
    except tf.errors.InvalidArgumentError as e:
      seconds[signature] += time.time() - start
      message = e.message
      counts["refused at the dtype check" if message.startswith("Expects arg") else
             "refused by the model"] += 1
      # The refusal names an input of the request (or the decoder node of a corrupt file).
      assert any(name in message for name in _INPUTS[signature]) or (
          "decode_image_bytes" in message), message
      return
    seconds[signature] += time.time() - start
    counts["answered"] += 1
    _check_answer(signature, inputs, outputs)

  one_request()
  total = sum(counts.values())
  print(f"\nfuzzed serving requests: {total} in {time.time() - t0:.0f} s: "
        + ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
        + "; seconds in the model: " + ", ".join(f"{name} {value:.1f}"
                                                 for name, value in sorted(seconds.items())))
  assert total >= 500
  assert counts["answered"] >= 25 and counts["refused by the model"] >= 200, counts
  # The process survived, and answers a good request exactly as before.
  after = serve(loaded, "serving_default", good), serve(loaded, "images", good_images)
  for old, new in zip(before, after):
    for name in old:
      np.testing.assert_array_equal(old[name], new[name])


def test_the_request_generator_makes_malformed_requests():
  # The generator does produce what the docstring says (not only well-formed requests).
  pool = _png_pool()
  seen = collections.Counter()

  @hypothesis.settings(max_examples=200, derandomize=True, database=None, deadline=None,
                       phases=[hypothesis.Phase.generate],
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(requests(pool))
  def look(request):
    signature, inputs = request
    seen[signature] += 1
    for value in inputs.values():
      seen["empty"] += value.size == 0
      seen["10,000"] += 10_000 in value.shape
      seen["not float32/uint8/string"] += value.dtype not in (np.float32, np.uint8, object)
      if value.dtype == np.float32:
        seen["NaN or Inf"] += not np.all(np.isfinite(value))
  look()
  assert all(seen[name] > 0 for name in SIGNATURES), seen
  assert min(seen["empty"], seen["10,000"], seen["not float32/uint8/string"],
             seen["NaN or Inf"]) >= 5, seen
