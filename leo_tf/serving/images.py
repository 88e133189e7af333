"""The image side of the classification SavedModel: pictures -> stage-1 embeddings, in the graph.

A request of the image signatures (serving.classification) carries pixels or
encoded files instead of embeddings:

  support_images       uint8  [B, N, K, H, W, C]  (single-task signatures: [N, K, H, W, C])
  query_images         uint8  [B, Q, H, W, C]     ([Q, H, W, C])
  support_image_bytes  string [B, N, K]           PNG or JPEG files ([N, K])
  query_image_bytes    string [B, Q]              ([Q])

Every image of a request has the same H and W (any, up to MAX_IMAGE_SIDE) and
C = the backbone's channels. `FrontEnd.embed` runs stage 1's own preprocessing
(leo_tf.images.pretrain.preprocess_images: threshold or scaling, area
resizing to S x S) and its backbone in inference mode (batch-norm running
statistics, no dropout) in fixed chunks of FrontEnd.chunk images (EMBED_CHUNK
= 32 unless the export says otherwise), the last one padded: every chunk has the
same shape, so an image's embedding does not depend on how many images share its
request (TensorFlow's convolutions round differently for other batch sizes), and
memory stays bounded for requests of thousands of images. Its position inside
its chunk can still move the last bit of a feature (oneDNN on a 2-core CPU,
BUILD_NOTES.md); with a chunk of N K + Q every task of a batched request fills
its own chunk, and requests concatenated by TF Serving's batcher answer exactly
as each alone. With FrontEnd.pad = False (export --noembed_pad) a request of
fewer images than the chunk is one call of its own size instead: faster for
large chunks, exact only within rounding.

The checks (check_images, decode) fail with InvalidArgument errors that name
the input and say what to send.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import tensorflow as tf

from leo_tf.serving import savedmodel

EMBED_CHUNK = 32  # images per backbone call by default; fixed, so answers do not depend on
# the number of images in a request (FrontEnd.chunk; export --embed_chunk)
MAX_EMBED_CHUNK = 4096  # images per backbone call at most (a chunk's activations are in memory)
MAX_IMAGE_SIDE = 1024  # H, W at most this (bounds the memory of one chunk)
MAX_DECODED_BYTES = 1 << 28  # pixels of the decoded files of one request, at most 256 MiB
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_HEADER_BYTES = 24  # signature (8), IHDR length and type (8), width (4), height (4)
_SHOWN = savedmodel.SHOWN


@dataclasses.dataclass(frozen=True, eq=False)
class FrontEnd:
  """Stage 1's embedding function, as the serving graph runs it.

  Attributes:
    backbone: keras.Model, float32 [M, S, S, C] -> features [M, F]; called
      with training=False.
    preprocess: pixels uint8 [M, H, W, C] -> float32 [M, S, S, C], stage 1's
      own (leo_tf.images.pretrain.preprocess_images).
    record: what leo_config.json says of it (stage 1's folder, backbone
      configuration, convention).
    chunk: images per backbone call (EMBED_CHUNK by default), the last chunk
      of a request padded with blank images. Fixed, because a backbone's
      features of an image can change in the last bits with the number of
      images in its call (up to 6e-7 on a 2-core CPU, BUILD_NOTES.md), and
      with its position in the call (one unit in the last place): a chunk of
      N K + Q, the images of the one task shape served, pads nothing and
      keeps every task in a chunk of its own, at the same positions.
    pad: True: every call has `chunk` images (the last chunk padded). False:
      a request of fewer images is one call of its own size, no padding; a
      large chunk then embeds a batched request of many tasks in few large
      calls (faster per image on a CPU) without slowing a single-task one,
      and an answer depends in its last bits on what shares its request.
  Build it from stage 1's folder with
  FrontEnd(*leo_tf.images.pretrain.load_embedding_function(folder)).
  """

  backbone: Any
  preprocess: Callable[[tf.Tensor], tf.Tensor]
  record: dict[str, Any]
  chunk: int = EMBED_CHUNK
  pad: bool = True

  def __post_init__(self):
    if (isinstance(self.chunk, bool) or not isinstance(self.chunk, int)
        or not 1 <= self.chunk <= MAX_EMBED_CHUNK):
      raise ValueError(
          f"embed_chunk is {self.chunk!r}: the backbone's images per call must be an integer "
          f"from 1 to {MAX_EMBED_CHUNK}; use N K + Q of the task shape you serve (5-way 1-shot "
          f"with 25 queries: 30), or the default {EMBED_CHUNK}.")

  @property
  def image_size(self) -> int:
    return int(self.backbone.input_shape[1])  # S

  @property
  def channels(self) -> int:
    return int(self.backbone.input_shape[3])  # C

  @property
  def embedding_dim(self) -> int:
    return int(self.backbone.output_shape[-1])  # F

  def variables(self) -> dict[str, tf.Variable]:
    """The backbone's tf.Variables (running statistics included), keyed by path."""
    return {"backbone-" + v.path.replace("/", "-"): savedmodel.tf_variable(v)
            for v in self.backbone.variables}

  def embed(self, images: tf.Tensor) -> tf.Tensor:
    """Checked pixels uint8 [M, H, W, C] -> raw features float32 [M, F].

    Chunks of `chunk` (E) images, the last padded with blank (zero) images
    whose features are dropped; one chunk at a time.
    """
    m = tf.shape(images)[0]
    # E: the chunk, or (pad=False) the request's M images where fewer (at least 1).
    size = tf.constant(self.chunk) if self.pad else tf.maximum(tf.minimum(m, self.chunk), 1)
    padding = (-m) % size
    padded = tf.pad(images, [[0, padding], [0, 0], [0, 0], [0, 0]])  # [M + pad, H, W, C]
    chunks = tf.reshape(padded, tf.concat([[-1, size], tf.shape(images)[1:]], axis=0))
    # [M + pad, H, W, C] -> [chunks, E, H, W, C]

    def embed_chunk(chunk):  # [E, H, W, C] -> [E, F]
      return self.backbone(self.preprocess(chunk), training=False)

    def loop():  # [chunks, E, F], one chunk after the other
      e = self.chunk if self.pad else None
      return tf.map_fn(embed_chunk, chunks, parallel_iterations=1,
                       fn_output_signature=tf.TensorSpec([e, self.embedding_dim], tf.float32))

    # A request of one chunk (a single task, usually) skips the loop and its overhead:
    # the same call on the same chunk, so the same features (tested).
    features = tf.cond(tf.equal(tf.shape(chunks)[0], 1), lambda: embed_chunk(chunks[0])[None],
                       loop)
    return tf.reshape(features, [-1, self.embedding_dim])[:m]  # [chunks, E, F] -> [M, F]



def _same_number_of_tasks(s_name: str, q_name: str):
  """The batched signatures' check: support and queries hold the same B >= 1 tasks on axis 0."""
  return lambda s, q: tf.debugging.Assert(
      tf.logical_and(tf.equal(tf.shape(s)[0], tf.shape(q)[0]), tf.shape(s)[0] > 0), [
          f"{s_name} and {q_name} must hold the same number B >= 1 of tasks on axis 0; send "
          "task b's support and queries at index b of both.", f"{s_name} shape:", tf.shape(s),
          f"{q_name} shape:", tf.shape(q)], _SHOWN)

def check_images(support: tf.Tensor, query: tf.Tensor, channels: int, *, batched: bool,
                 support_size: Callable[[tf.Tensor, str], tf.Operation],
                 names: tuple[str, str] = ("support_images", "query_images")
                 ) -> tuple[tf.Tensor, tf.Tensor]:
  """Checks pixels in the graph; returns them as [B, N, K, H, W, C], [B, Q, H, W, C].

  In this order (the first problem is the one reported): rank of support and
  of query, their channels, B equal (batched), support not empty, N >= 2,
  the task's size (support_size),
  H and W >= 1 and <= MAX_IMAGE_SIDE, query's H and W equal support's (when
  Q > 0).

  Args:
    support: uint8 [B, N, K, H, W, C] (batched) or [N, K, H, W, C].
    query: uint8 [B, Q, H, W, C] (batched) or [Q, H, W, C].
    channels: C, the backbone's.
    batched: whether the task axis B comes first.
    support_size: (int32 [2] (N, K), name) -> the learner's Assert on the
      task's size (after N >= 2).
    names: the inputs' names in the messages.

  Returns:
    (support, query) with the task axis (B = 1 for a single task).
  """
  s_name, q_name = names
  b = "B, " if batched else ""
  s_rank, q_rank = (6, 5) if batched else (5, 4)
  color = "1 for grayscale" if channels == 1 else f"{channels} for RGB"
  checks = [
      lambda s, q: tf.debugging.Assert(tf.equal(tf.rank(s), s_rank), [
          f"{s_name} must be rank {s_rank}, [{b}N, K, H, W, C] with C = {channels}: N classes, "
          f"K images of each; for one image per class send [{b}N, 1, H, W, C].",
          f"{s_name} shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.rank(q), q_rank), [
          f"{q_name} must be rank {q_rank}, [{b}Q, H, W, C] with C = {channels}: one image per "
          f"query; for a single query send [{b}1, H, W, C].", f"{q_name} shape:", tf.shape(q)],
          _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.shape(s)[-1], channels), [
          f"{s_name} must have C = {channels} channels ({color}) as the backbone takes; "
          "convert the images before sending.", f"{s_name} shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.shape(q)[-1], channels), [
          f"{q_name} must have C = {channels} channels ({color}) as the backbone takes; "
          "convert the images before sending.", f"{q_name} shape:", tf.shape(q)], _SHOWN),
  ]
  if batched:
    checks.append(_same_number_of_tasks(s_name, q_name))
  first = 1 if batched else 0  # the axis of N
  checks += [
      lambda s, q: tf.debugging.Assert(tf.reduce_prod(tf.shape(s)[first:first + 2]) > 0, [
          f"{s_name} is empty (N = 0 classes or K = 0 images per class); send "
          f"[{b}N, K, H, W, C] with N >= 2 classes and K >= 1 images of each.",
          f"{s_name} shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.shape(s)[first] >= 2, [
          f"{s_name} has fewer than 2 classes; a task needs N >= 2 classes, one per row of "
          f"{s_name} [{b}N, K, H, W, C].", f"{s_name} shape:", tf.shape(s)], _SHOWN),
      lambda s, q: support_size(tf.shape(s)[first:first + 2], s_name),
      lambda s, q: tf.debugging.Assert(
          tf.logical_and(tf.reduce_all(tf.shape(s)[-3:-1] >= 1),
                         tf.reduce_all(tf.shape(s)[-3:-1] <= MAX_IMAGE_SIDE)), [
              f"{s_name} images must be 1 to {MAX_IMAGE_SIDE} pixels high and wide; resize "
              "larger images before sending.", f"{s_name} shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(
          tf.logical_or(tf.equal(tf.size(q), 0),
                        tf.reduce_all(tf.equal(tf.shape(q)[-3:-1], tf.shape(s)[-3:-1]))), [
              f"{q_name} images must have the H and W of the {s_name} (every image of a "
              "request the same size); resize them to one size before sending.",
              f"{s_name} shape:", tf.shape(s), f"{q_name} shape:", tf.shape(q)], _SHOWN),
  ]
  support, query = savedmodel.chain_checks(checks, support, query)
  # Static ranks and C for what follows, set by reshapes (no-ops on a checked request).
  support = tf.reshape(support, tf.unstack(tf.shape(support), num=s_rank)[:-1] + [channels])
  query = tf.reshape(query, tf.unstack(tf.shape(query), num=q_rank)[:-1] + [channels])
  if not batched:
    support, query = support[None], query[None]  # [N, K, H, W, C] -> [1, N, K, H, W, C]
  return support, query


def decode(support: tf.Tensor, query: tf.Tensor, channels: int, *, batched: bool,
           support_size: Callable[[tf.Tensor, str], tf.Operation]
           ) -> tuple[tf.Tensor, tf.Tensor]:
  """Encoded files (PNG or JPEG) -> pixels uint8 [B, N, K, H, W, C], [B, Q, H, W, C].

  Checked, in this order: ranks, B equal (batched), support not empty, N >= 2,
  the task's size (support_size);
  then, image by image, that it is a PNG or JPEG file and H, W <= MAX_IMAGE_SIDE
  (from its header, before decoding), that all images have one size and that
  the decoded pixels stay under MAX_DECODED_BYTES; decoding itself then
  reports a corrupt file. Decoded as stage 1 reads image files
  (tf.io.decode_image with C channels: grayscale and RGB converted, alpha
  dropped). The pixels then go through check_images like uint8 requests.

  Args:
    support: string [B, N, K] (batched) or [N, K].
    query: string [B, Q] (batched) or [Q].
    channels: C, the backbone's.
    batched: whether the task axis B comes first.
    support_size: as for check_images.
  """
  s_name, q_name = "support_image_bytes", "query_image_bytes"
  b = "B, " if batched else ""
  s_rank, q_rank = (3, 2) if batched else (2, 1)
  checks = [
      lambda s, q: tf.debugging.Assert(tf.equal(tf.rank(s), s_rank), [
          f"{s_name} must be rank {s_rank}, [{b}N, K]: one PNG or JPEG file per support image "
          "(REST: {b64: <base64 of the file>}); for one image per class send "
          f"[{b}N, 1].", f"{s_name} shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.equal(tf.rank(q), q_rank), [
          f"{q_name} must be rank {q_rank}, [{b}Q]: one PNG or JPEG file per query.",
          f"{q_name} shape:", tf.shape(q)], _SHOWN),
  ]
  if batched:
    checks.append(_same_number_of_tasks(s_name, q_name))
  first = 1 if batched else 0
  checks += [
      lambda s, q: tf.debugging.Assert(tf.size(s) > 0, [
          f"{s_name} is empty (N = 0 classes or K = 0 images per class); send [{b}N, K] with "
          "N >= 2 classes and K >= 1 images of each.", f"{s_name} shape:", tf.shape(s)], _SHOWN),
      lambda s, q: tf.debugging.Assert(tf.shape(s)[first] >= 2, [
          f"{s_name} has fewer than 2 classes; a task needs N >= 2 classes, one per row of "
          f"{s_name} [{b}N, K].", f"{s_name} shape:", tf.shape(s)], _SHOWN),
      lambda s, q: support_size(tf.shape(s)[first:first + 2], s_name),
  ]
  support, query = savedmodel.chain_checks(checks, support, query)
  if not batched:
    support, query = support[None], query[None]  # [N, K] -> [1, N, K], [Q] -> [1, Q]
  support_shape, query_shape = tf.shape(support), tf.shape(query)  # [B, N, K], [B, Q]
  files = tf.concat([tf.reshape(support, [-1]), tf.reshape(query, [-1])], axis=0)  # [B N K + B Q]
  num_support = tf.size(support)

  def where(i):
    """The input and index of file i, for messages: string "support_image_bytes[n, k]"."""

    def index_text(index, name):  # int [r] -> "name[i, j]"
      index = index if batched else index[1:]  # no task axis in a single-task request
      text = tf.strings.reduce_join(tf.strings.as_string(index), separator=", ")
      return tf.strings.join([name, "[", text, "]"])

    return tf.cond(
        i < num_support,
        lambda: index_text(tf.unravel_index(i, support_shape), s_name),
        lambda: index_text(tf.unravel_index(i - num_support, query_shape), q_name))

  def header(i):
    """[H, W] of file i from its header, checked to be a PNG or JPEG of a size we take."""
    data = files[i]
    name = where(i)
    is_png = tf.logical_and(tf.strings.length(data) >= _PNG_HEADER_BYTES,
                            tf.equal(tf.strings.substr(data, 0, 8), _PNG_SIGNATURE))
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), _JPEG_SIGNATURE)
    known = tf.debugging.Assert(tf.logical_or(is_png, is_jpeg), [
        name, "is not a PNG or JPEG file; send the bytes of PNG or JPEG files (REST: "
        "{b64: <base64 of the file>}), not pixels and not base64 twice. Its first bytes:",
        tf.io.decode_raw(tf.strings.substr(data, 0, 8), tf.uint8)], _SHOWN)
    with tf.control_dependencies([known]):
      data = tf.identity(data)

    def png_size():
      # IHDR: big-endian width and height after the signature and the chunk's length and type.
      raw = tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8)  # [8]
      raw = tf.cast(tf.reshape(raw, [2, 4]), tf.int64)  # [width, height] x 4 bytes
      width_height = tf.reduce_sum(raw * tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64),
                                   axis=1)  # [2]
      return tf.reverse(width_height, axis=[0])  # [H, W]

    def jpeg_size():
      return tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)  # [H, W]

    size = tf.cond(is_png, png_size, jpeg_size)  # [H, W] int64
    fits = tf.debugging.Assert(
        tf.logical_and(tf.reduce_all(size >= 1), tf.reduce_all(size <= MAX_IMAGE_SIDE)), [
            name, f"is an image of 1 to {MAX_IMAGE_SIDE} pixels high and wide; resize "
            "larger images before sending. [H W]:", size], _SHOWN)
    with tf.control_dependencies([fits]):
      return tf.identity(size)

  sizes = tf.map_fn(header, tf.range(tf.size(files)), fn_output_signature=tf.int64)  # [M, 2]
  same = tf.reduce_all(tf.equal(sizes, sizes[:1]), axis=1)  # [M]
  first_other = tf.argmin(tf.cast(same, tf.int32), output_type=tf.int32)
  other = where(first_other)
  one_size = tf.debugging.Assert(tf.reduce_all(same), [
      "every image of a request must have the same H and W; resize them to one size before "
      f"sending. The first image ({s_name}[0...]) is [H W]", sizes[0], "but", other,
      "is", sizes[first_other]], _SHOWN)
  with tf.control_dependencies([one_size]):
    total = tf.cast(tf.size(files), tf.int64) * tf.reduce_prod(sizes[0]) * channels
  small = tf.debugging.Assert(total <= MAX_DECODED_BYTES, [
      f"the request's images decode to more than {MAX_DECODED_BYTES} bytes of pixels; send "
      "fewer or smaller images per request. Bytes:", total], _SHOWN)
  with tf.control_dependencies([small]):
    files = tf.identity(files)

  def decode_one(data):  # string [] -> uint8 [H, W, C]
    return tf.io.decode_image(data, channels=channels, expand_animations=False,
                              name="decode_image_bytes")

  pixels = tf.map_fn(decode_one, files,
                     fn_output_signature=tf.TensorSpec([None, None, channels], tf.uint8))
  image_shape = tf.shape(pixels)[1:]  # [H, W, C]
  num_files = tf.size(support)
  support_pixels = tf.reshape(pixels[:num_files], tf.concat([support_shape, image_shape], 0))
  query_pixels = tf.reshape(pixels[num_files:], tf.concat([query_shape, image_shape], 0))
  return support_pixels, query_pixels  # [B, N, K, H, W, C], [B, Q, H, W, C]
