r"""Stage 1 (appendix B.2): pre-train a feature extractor, write LEO embeddings.

    python -m leo_tf.images.pretrain --data_dir=../shared/data/omniglot \
        --output_path=data/embeddings

A Keras backbone (backbones.py) is trained by plain supervised classification
of the meta-training classes only (every image of every train class, with
small random translations); meta-validation classes choose the epoch (the
nearest-class-mean accuracy of 20-way 1-shot meta-validation tasks on the
features, after every epoch); meta-test classes are never seen until their
embeddings are written. The best epoch's backbone then embeds every image of
every split, and the features are written with embeddings.write_split in the
published LEO format (with `heldout_alphabets`, the backbone trains on the
training classes of the other alphabets, and the train embeddings hold only
the held-out alphabets' classes: features the backbone never saw, as the test
classes' are):

  <output_path>/<dataset_name>/center/{train,val,test}_embeddings.pkl
  <output_path>/<dataset_name>/pretrain_info.json    settings, per-epoch log, NCM accuracies
  <output_path>/<dataset_name>/backbone.weights.h5   the chosen backbone's weights

so stage 2 reads them with the loader of miniImageNet (`--dataset_name=omniglot
--embedding_dim=<F>`).

The classifier head on top of the backbone is a plain linear softmax layer by
default; `head="cosine"` gives a cosine classifier (logit_c = s <f / |f|,
w_c / |w_c|> with a learned scale s; Gidaris and Komodakis 2018), which learned
no better in our short runs (BUILD_NOTES.md).

Image sources: Omniglot from the shared npz files (`data_dir`) or the official
zips (`omniglot_zips`) or TensorFlow Datasets (`omniglot_tfds`, where the machine is
online), Vinyals split, 28x28; or any folder of images laid out
as `<image_dir>/{train,val,test}/<class>/<image>` (miniImageNet as usually
distributed), resized to `backbone.image_size`, for the WRN-28-10 of the paper.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from leo_tf.core import statistics
from leo_tf.images import backbones
from leo_tf.data import atomic
from leo_tf.data import embeddings as emb
from leo_tf.data import episodes
from leo_tf.images import omniglot
from leo_tf.classification import prototypes
from leo_tf.outer import progress

HEADS = ("cosine", "linear")
INFO_FILE = "pretrain_info.json"
WEIGHTS_FILE = "backbone.weights.h5"
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """Stage 1: data, backbone, supervised training and how the epoch is chosen."""

  data_dir: str = "../shared/data/omniglot"  # Omniglot folder (npz, index.csv, splits/)
  omniglot_zips: tuple[str, ...] = ()  # official images_*.zip instead of the npz files
  omniglot_tfds: bool = False  # tfds.load("omniglot") instead of the npz files
  tfds_data_dir: str | None = None  # TFDS's data_dir (default: TFDS's own)
  image_dir: str | None = None  # <image_dir>/{train,val,test}/<class>/<image> instead of Omniglot
  output_path: str = "data/embeddings"  # the data_path of stage 2
  dataset_name: str = "omniglot"  # folder under output_path
  backbone: backbones.BackboneConfig = backbones.BackboneConfig()
  # A folder stage 1 wrote: embed with its trained backbone instead of training one
  # (backbone is then that folder's, with its own feature_layers).
  backbone_from: str | None = None
  head: str = "linear"  # linear softmax, or cosine (learned scale) classifier on the features
  cosine_scale_init: float = 10.0  # s at the start (cosine head)
  epochs: int = 4  # passes over the meta-training images
  batch_size: int = 64  # images per step (small: more steps per CPU-second, see BUILD_NOTES)
  learning_rate: float = 3e-3  # Adam, cosine-decayed to 0 over all steps
  weight_decay: float = 0.0  # decoupled weight decay (AdamW) on the backbone and head
  augment_shift: int = 2  # random translation by up to so many pixels (0: none)
  max_classes: int | None = None  # keep so many classes of each split (quick runs, tests)
  max_eval_classes: int | None = None  # and so many of val and test (quick runs, tests)
  # Held-out features (Omniglot): the backbone trains on the training classes of all but
  # so many alphabets, and the train embeddings hold only those alphabets' classes, so
  # that stage 2 meta-trains on features as unfamiliar to the backbone as the test
  # classes' (0: train on every training class and embed them all).
  heldout_alphabets: int = 0
  num_eval_tasks: int = 1000  # meta-validation tasks per epoch for choosing it
  eval_num_classes: int = 20  # N of those tasks
  eval_num_shots: int = 1  # K of those tasks
  embed_batch_size: int = 1024  # images per forward pass when embedding
  seed: int = 0  # initialisation, batch order, augmentation and evaluation tasks
  progress: bool = True  # progress lines on stderr

  def __post_init__(self):
    if self.head not in HEADS:
      raise ValueError(f"head must be one of {HEADS}, got {self.head!r}.")
    for name in ("epochs", "batch_size", "num_eval_tasks", "embed_batch_size",
                 "eval_num_shots"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.omniglot_zips and self.omniglot_tfds:
      raise ValueError("Choose one Omniglot source: omniglot_zips or omniglot_tfds, not both.")
    if self.eval_num_classes < 2:
      raise ValueError(f"eval_num_classes must be >= 2, got {self.eval_num_classes}.")
    if self.learning_rate <= 0 or self.cosine_scale_init <= 0:
      raise ValueError(
          f"learning_rate and cosine_scale_init must be > 0, got {self.learning_rate} and "
          f"{self.cosine_scale_init}.")
    if self.weight_decay < 0 or self.augment_shift < 0:
      raise ValueError(
          f"weight_decay and augment_shift must be >= 0, got {self.weight_decay} and "
          f"{self.augment_shift}.")
    for name in ("max_classes", "max_eval_classes"):
      if getattr(self, name) is not None and getattr(self, name) < 2:
        raise ValueError(f"{name} must be >= 2 or None, got {getattr(self, name)}.")
    if self.heldout_alphabets < 0:
      raise ValueError(f"heldout_alphabets must be >= 0 (0: none held out), got "
                       f"{self.heldout_alphabets}.")
    if self.heldout_alphabets and self.image_dir:
      raise ValueError("heldout_alphabets holds out Omniglot alphabets; with image_dir, "
                       "split the class folders yourself (or drop heldout_alphabets).")
    if "-" in self.dataset_name or "/" in self.dataset_name or not self.dataset_name:
      raise ValueError(
          f"dataset_name must be a plain folder name without '-' or '/', got "
          f"{self.dataset_name!r} (e.g. 'omniglot').")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSplit:
  """The images of one split, flat.

  images: float32 [M, S, S, C] in [0, 1]; labels: int64 [M] class index within
  the split; keys: M embeddings keys "<split>-<class>-<class>_<file>";
  num_classes: C.
  """

  images: np.ndarray
  labels: np.ndarray
  keys: tuple[str, ...]
  num_classes: int


def omniglot_splits(config: PretrainConfig) -> dict[str, ImageSplit]:
  """The Vinyals split from the npz files (or the official zips, or TFDS), 28x28 by default."""
  size = config.backbone.image_size
  characters = None
  if config.omniglot_zips or config.omniglot_tfds:
    lines = [l for s in omniglot.SPLITS for l in omniglot.read_split_file(config.data_dir, s)]
    names = sorted({omniglot.parse_class_line(l)[0] for l in lines})
    if config.omniglot_zips:
      characters = omniglot.load_characters_from_zips(config.omniglot_zips, size, names=names)
    else:
      examples, alphabet_names = omniglot.tfds_examples(config.tfds_data_dir)
      characters = omniglot.load_characters_from_tfds(examples, alphabet_names, size, names=names)
  splits = omniglot.load_vinyals_splits(config.data_dir, size, max_classes=config.max_classes,
                                        characters=characters,
                                        max_eval_classes=config.max_eval_classes,
                                        heldout_alphabets=config.heldout_alphabets)
  out = {}
  for name, split in splits.items():
    images, labels = split.flat()  # [C*20, S, S, 1], [C*20]
    out[name] = ImageSplit(images=images, labels=labels, keys=tuple(split.keys(f"omniglot_{name}")),
                           num_classes=split.num_classes)
  return out


def folder_splits(config: PretrainConfig) -> dict[str, ImageSplit]:
  """Images from `<image_dir>/<split>/<class>/<file>`, resized to backbone.image_size.

  Class folder names become the embeddings' class names, so they must not
  contain '-'; image files are renamed "<class>_<file>" in the keys.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  size, channels = config.backbone.image_size, config.backbone.image_channels
  out = {}
  for split in omniglot.SPLITS:
    root = os.path.join(config.image_dir, split)
    if not os.path.isdir(root):
      raise ValueError(
          f"{root}: no such folder; image_dir must hold train/, val/ and test/, each with one "
          "folder of images per class.")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    classes = classes[:config.max_classes]
    if split != "train":
      classes = classes[:config.max_eval_classes]
    if not classes:
      raise ValueError(f"{root}: no class folders found.")
    images, labels, keys = [], [], []
    for c, class_name in enumerate(classes):
      if "-" in class_name:
        raise ValueError(f"{root}/{class_name}: class folder names must not contain '-' "
                         "(the LEO key separator); rename the folder.")
      files = sorted(f for f in os.listdir(os.path.join(root, class_name))
                     if f.lower().endswith(_IMAGE_EXTENSIONS))
      for file_name in files:
        data = tf.io.read_file(os.path.join(root, class_name, file_name))
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image = preprocess_images(image[None], size, "image_dir")[0]  # [H, W, C] -> [S, S, C]
        images.append(image.numpy())
        labels.append(c)
        stem = file_name.replace("-", "_")
        keys.append(f"{split}-{class_name}-{class_name}_{stem}")
    out[split] = ImageSplit(images=np.stack(images, axis=0).astype(np.float32),
                            labels=np.array(labels, np.int64), keys=tuple(keys),
                            num_classes=len(classes))
  return out


def image_convention(config: PretrainConfig) -> str:
  """How stage 1 turned its images into backbone inputs: "omniglot" or "image_dir"."""
  return "image_dir" if config.image_dir else "omniglot"


def preprocess_images(images, image_size: int, convention: str):
  """Pixels uint8 [M, H, W, C] -> float32 [M, S, S, C], as stage 1 feeds its backbone.

  "omniglot": ink 1.0 where a pixel is <= 127 (dark on white, as the official
  PNGs, which stage 1 reads with this threshold; the shared npz files hold the
  same drawings as booleans), background 0.0, then area averaging to S x S
  (omniglot.resize). "image_dir": pixel / 255, then area averaging to S x S
  (folder_splits). Any H and W; a TensorFlow function, so the serving graph
  runs this very code (leo_tf.serving.images).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if convention == "omniglot":
    ink = tf.cast(images <= 127, tf.float32)  # [M, H, W, C], ink 1.0
    return tf.image.resize(ink, (image_size, image_size), method="area")  # [M, S, S, C]
  if convention == "image_dir":
    scaled = tf.cast(images, tf.float32) / 255.0  # [M, H, W, C] in [0, 1]
    return tf.image.resize(scaled, (image_size, image_size), method="area", antialias=True)
  raise ValueError(f"convention must be 'omniglot' or 'image_dir', got {convention!r}.")


def backbone_config_of(folder: str, feature_layers: str | None = None
                       ) -> tuple[backbones.BackboneConfig, dict[str, Any]]:
  """The BackboneConfig of the backbone stage 1 wrote to `folder`, and its pretrain_info.json.

  Args:
    folder: <output_path>/<dataset_name>, holding pretrain_info.json and
      backbone.weights.h5.
    feature_layers: where the features come from (backbones.BackboneConfig);
      None: those that produced the folder's embeddings ("": the default).

  Raises:
    FileNotFoundError: no pretrain_info.json or backbone.weights.h5 in folder.
  """
  info_path, weights_path = os.path.join(folder, INFO_FILE), os.path.join(folder, WEIGHTS_FILE)
  for path in (info_path, weights_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"No {path}: the backbone folder must be the one stage 1 wrote "
          "(<output_path>/<dataset_name>, e.g. data/embeddings/omniglot, with "
          f"{INFO_FILE} and {WEIGHTS_FILE}).")
  with open(info_path) as f:
    info = json.load(f)
  fields = dict(info["config"]["backbone"])
  fields["conv4_channels"] = tuple(fields["conv4_channels"])
  # Folders written before feature_layers existed hold the last layer's features.
  fields.setdefault("feature_layers", "final" if fields["name"] == "wide_resnet" else "")
  if feature_layers is not None:
    fields["feature_layers"] = feature_layers
  return backbones.BackboneConfig(**fields), info


def read_backbone(folder: str, feature_layers: str | None = None
                  ) -> tuple[Any, backbones.BackboneConfig, dict[str, Any]]:
  """The backbone stage 1 wrote to `folder`, with its weights (see backbone_config_of).

  Returns:
    (the whole backbone, keras.Model [M, S, S, C] -> its last layer's features
    (backbones.feature_extractor takes the configured ones); its BackboneConfig;
    the folder's pretrain_info.json).
  """
  backbone_config, info = backbone_config_of(folder, feature_layers)
  backbone = backbones.build(backbone_config)
  backbone.load_weights(os.path.join(folder, WEIGHTS_FILE))
  return backbone, backbone_config, info


def load_embedding_function(folder: str) -> tuple[Any, Callable, dict[str, Any]]:
  """Stage 1's embedding function as `pretrain` wrote it to `folder`, for serving.

  Args:
    folder: <output_path>/<dataset_name>, holding pretrain_info.json and
      backbone.weights.h5.

  Returns:
    (features: keras.Model float32 [M, S, S, C] -> features [M, F] from the
    layers that produced the folder's embeddings, to be called with
    training=False as make_embed_fn does; preprocess: pixels uint8
    [M, H, W, C] -> float32 [M, S, S, C] (preprocess_images with stage 1's
    size and convention); record: what an export writes down about it).

  Raises:
    FileNotFoundError: no pretrain_info.json or backbone.weights.h5 in folder.
  """
  import functools  # pylint: disable=g-import-not-at-top
  backbone, backbone_config, info = read_backbone(folder)
  convention = "image_dir" if info["config"].get("image_dir") else "omniglot"
  preprocess = functools.partial(preprocess_images, image_size=backbone_config.image_size,
                                 convention=convention)
  record = {"folder": os.path.abspath(folder), "backbone": dataclasses.asdict(backbone_config),
            "convention": convention, "embedding_dim": backbone_config.feature_dim,
            "feature_layers": backbone_config.feature_layers,
            "best_epoch": info.get("best_epoch")}
  return backbones.feature_extractor(backbone, backbone_config), preprocess, record


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
  """Translates each image [B, S, S, C] by up to max_shift pixels, zero-filled."""
  if max_shift == 0:
    return images
  b, s = images.shape[0], images.shape[1]
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  offsets = rng.integers(0, 2 * max_shift + 1, size=(b, 2))  # [B, 2]
  rows = offsets[:, 0:1] + np.arange(s)[None, :]  # [B, S]
  cols = offsets[:, 1:2] + np.arange(s)[None, :]  # [B, S]
  batch = np.arange(b)[:, None, None]  # [B, 1, 1]
  return padded[batch, rows[:, :, None], cols[:, None, :]]  # [B, S+2m, S+2m, C] -> [B, S, S, C]


def make_embed_fn(backbone) -> Callable[[np.ndarray, int], np.ndarray]:
  """embed_fn(images [M, S, S, C], batch_size) -> features float32 [M, F].

  Batch norm in inference mode; one compiled forward pass with an unknown batch
  size, so the last (smaller) batch and later calls reuse it.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = tf.TensorSpec([None, *backbone.input_shape[1:]], tf.float32)

  @tf.function(input_signature=[spec], autograph=False)
  def forward(x):
    return backbone(x, training=False)  # [b, S, S, C] -> [b, F]

  def embed_fn(images: np.ndarray, batch_size: int) -> np.ndarray:
    out = [forward(tf.convert_to_tensor(images[i:i + batch_size], tf.float32)).numpy()
           for i in range(0, images.shape[0], batch_size)]
    return np.concatenate(out, axis=0).astype(np.float32)  # [M, F]

  return embed_fn


def ncm_eval(features: np.ndarray, split: ImageSplit, num_classes: int, num_shots: int,
             num_tasks: int, seed: int) -> tuple[float, float]:
  """Mean and 95% half-width of nearest-class-mean accuracy on N-way K-shot tasks.

  The features are L2-normalised as stage 2 loads them (embeddings.build_split);
  every remaining image of a class is a query, as in meta-validation.
  """
  class_names = [emb.parse_key(k)[0] for k in split.keys]
  image_names = [emb.parse_key(k)[1] for k in split.keys]
  emb_split = emb.build_split(features, class_names, image_names, paths=("<features>",))
  n = min(num_classes, emb_split.num_classes)
  v = episodes.num_eval_val_examples(emb_split, num_shots)
  sampler = episodes.EpisodeSampler(emb_split, n, num_shots, v, seed=seed, stream="ncm")
  accuracies = np.concatenate([prototypes.ncm_accuracy(chunk) for chunk in
                               episodes.iterate_tasks(sampler, num_tasks, 200)])
  mean, half, _ = statistics.confidence_interval(accuracies)
  return mean, half


def _build_head(num_classes: int, feature_dim: int, config: PretrainConfig):
  """The classifier on the features: (variables, logits_fn(features [B, F]) -> [B, C])."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  init = tf.random.stateless_normal([feature_dim, num_classes], seed=[config.seed, 7],
                                    stddev=np.sqrt(2.0 / (feature_dim + num_classes)))
  kernel = tf.Variable(init, name="head_kernel")  # [F, C]
  if config.head == "cosine":
    scale = tf.Variable(config.cosine_scale_init, name="head_scale")

    def logits_fn(features):
      f = tf.math.l2_normalize(features, axis=-1)  # [B, F]
      w = tf.math.l2_normalize(kernel, axis=0)  # [F, C]
      return scale * tf.matmul(f, w)  # [B, C]

    return [kernel, scale], logits_fn
  bias = tf.Variable(tf.zeros([num_classes]), name="head_bias")

  def linear_fn(features):
    return tf.matmul(features, kernel) + bias  # [B, F] x [F, C] -> [B, C]

  return [kernel, bias], linear_fn


def _log(config: PretrainConfig, text: str) -> None:
  if config.progress:
    print(text, file=sys.stderr, flush=True)


def train_backbone(config: PretrainConfig, train: ImageSplit, val: ImageSplit,
                   log: Callable[[str], None]) -> tuple[Any, list[dict[str, Any]], int]:
  """Supervised training on `train`; returns (backbone at the best epoch, epoch log, best epoch).

  The best epoch is the one with the highest NCM accuracy on eval_num_classes-
  way eval_num_shots-shot tasks of `val` (epoch 0 is the untrained backbone).
  """
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(config.seed)
  backbone = backbones.build(config.backbone, seed=config.seed)
  # The classifier sits on the last layer; the embeddings (and the epoch's choice) use
  # the feature_layers, which may be earlier (backbones.feature_extractor).
  head_vars, logits_fn = _build_head(train.num_classes, config.backbone.final_dim, config)
  m = train.images.shape[0]
  steps_per_epoch = -(-m // config.batch_size)
  total_steps = steps_per_epoch * config.epochs
  schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, total_steps)
  if config.weight_decay > 0:
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
  else:
    optimizer = keras.optimizers.Adam(schedule)
  variables = backbone.trainable_variables + head_vars
  optimizer.build(variables)

  @tf.function(reduce_retracing=True, autograph=False)
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      logits = logits_fn(backbone(images, training=True))  # [B, C]
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), axis=0)
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables))
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32)  # [B]
    return loss, tf.reduce_mean(correct, axis=0)

  embed_fn = make_embed_fn(backbones.feature_extractor(backbone, config.backbone))

  def validate():
    features = embed_fn(val.images, config.embed_batch_size)  # [M_val, F]
    return ncm_eval(features, val, config.eval_num_classes, config.eval_num_shots,
                    config.num_eval_tasks, config.seed)

  rng = np.random.default_rng([config.seed, 1])
  t0 = time.time()
  mean, half = validate()
  history = [{"epoch": 0, "val_ncm_accuracy": mean, "val_ncm_ci95": half, "seconds": 0.0}]
  best_epoch, best_accuracy, best_weights = 0, mean, backbone.get_weights()
  log(f"stage 1: {config.backbone.name} ({backbone.count_params():,} parameters, "
      f"features {config.backbone.feature_layers}, F={config.backbone.feature_dim}) on "
      f"{train.num_classes} classes / {m} images, "
      f"{config.epochs} epochs of {steps_per_epoch} steps; untrained backbone: val "
      f"{config.eval_num_classes}-way {config.eval_num_shots}-shot NCM {100 * mean:.2f}%")
  for epoch in range(1, config.epochs + 1):
    order = rng.permutation(m)
    losses, accs = [], []
    t_epoch = time.time()
    for i in range(steps_per_epoch):
      idx = np.sort(order[i * config.batch_size:(i + 1) * config.batch_size])
      images = random_shift(train.images[idx], config.augment_shift, rng)
      loss, acc = train_step(tf.convert_to_tensor(images), tf.convert_to_tensor(train.labels[idx]))
      losses.append(float(loss))
      accs.append(float(acc))
      if (i + 1) % 50 == 0:
        rate = (i + 1) * config.batch_size / (time.time() - t_epoch)
        log(f"  epoch {epoch}/{config.epochs} step {i + 1}/{steps_per_epoch}: loss "
            f"{np.mean(losses[-50:]):.3f} train acc {100 * np.mean(accs[-50:]):.1f}% "
            f"({rate:.0f} images/s)")
    mean, half = validate()
    record = {"epoch": epoch, "loss": float(np.mean(losses)), "train_accuracy": float(np.mean(accs)),
              "val_ncm_accuracy": mean, "val_ncm_ci95": half,
              "seconds": time.time() - t0}
    history.append(record)
    improved = mean > best_accuracy
    if improved:
      best_epoch, best_accuracy, best_weights = epoch, mean, backbone.get_weights()
    log(f"stage 1 epoch {epoch}/{config.epochs}: loss {record['loss']:.3f}, train acc "
        f"{100 * record['train_accuracy']:.1f}%, val {config.eval_num_classes}-way "
        f"{config.eval_num_shots}-shot NCM {100 * mean:.2f}% +- {100 * half:.2f}%"
        f"{' (best)' if improved else ''} [{time.time() - t0:.0f}s]")
  backbone.set_weights(best_weights)
  return backbone, history, best_epoch


def heldout_alphabet_names(config: PretrainConfig) -> list[str]:
  """The alphabets whose training classes the backbone does not train on ([] for none)."""
  if not config.heldout_alphabets:
    return []
  lines = omniglot.evenly_spaced(omniglot.read_split_file(config.data_dir, "train"),
                                 config.max_classes)
  return omniglot.hold_out_alphabets(lines, config.heldout_alphabets)[2]


def output_folder(config: PretrainConfig) -> str:
  return os.path.join(config.output_path, config.dataset_name)


def pretrain(config: PretrainConfig) -> dict[str, Any]:
  """Runs stage 1 and writes the embeddings of every split; returns the info it writes.

  Returns:
    The contents of pretrain_info.json: the configuration, the epoch log, the
    chosen epoch, the embedding size and the NCM accuracy of every split's
    embeddings (train, val, test; eval_num_classes-way eval_num_shots-shot).
  """
  t0 = time.time()
  log = lambda text: _log(config, text)
  splits = folder_splits(config) if config.image_dir else omniglot_splits(config)
  log(f"stage 1: loaded {', '.join(f'{s} {v.num_classes} classes' for s, v in splits.items())} "
      f"[{time.time() - t0:.0f}s]")
  if config.backbone_from:
    # Embed with a backbone stage 1 trained before (other feature_layers, same weights).
    backbone, _, source = read_backbone(config.backbone_from)
    source_heldout = source["config"].get("heldout_alphabets", 0)
    if source_heldout != config.heldout_alphabets:
      raise ValueError(
          f"backbone_from {config.backbone_from} was trained with heldout_alphabets="
          f"{source_heldout}, this run asks for {config.heldout_alphabets}: its train "
          f"embeddings would hold classes its backbone saw; pass --heldout_alphabets="
          f"{source_heldout}.")
    history, best_epoch = source["history"], source["best_epoch"]
    log(f"stage 1: the backbone of {config.backbone_from} (epoch {best_epoch}), features "
        f"{config.backbone.feature_layers}")
  else:
    # With heldout_alphabets the backbone trains on the other alphabets' classes.
    backbone, history, best_epoch = train_backbone(
        config, splits.get("backbone_train", splits["train"]), splits["val"], log)
  folder = output_folder(config)
  os.makedirs(folder, exist_ok=True)
  # Keras writes to a path ending in .weights.h5: a hidden one beside it, then renamed.
  partial = os.path.join(folder, f".{os.getpid()}.{WEIGHTS_FILE}")
  backbone.save_weights(partial)
  os.replace(partial, os.path.join(folder, WEIGHTS_FILE))
  ncm = {}
  embed_fn = make_embed_fn(backbones.feature_extractor(backbone, config.backbone))
  for split_name in omniglot.SPLITS:
    split = splits[split_name]
    features = embed_fn(split.images, config.embed_batch_size)  # [M, F]
    path = emb.split_path(config.output_path, config.dataset_name, "center", split_name)
    emb.write_split(path, features, split.keys, split.labels)
    mean, half = ncm_eval(features, split, config.eval_num_classes, config.eval_num_shots,
                          config.num_eval_tasks, config.seed)
    ncm[split_name] = {"accuracy": mean, "ci95": half}
    log(f"stage 1: wrote {path} ({features.shape[0]} x {features.shape[1]}); "
        f"{config.eval_num_classes}-way {config.eval_num_shots}-shot NCM {100 * mean:.2f}% "
        f"+- {100 * half:.2f}%")
  info = {
      "config": dataclasses.asdict(config),
      "embedding_dim": config.backbone.feature_dim,
      "feature_layers": config.backbone.feature_layers,  # which layers made the embeddings
      "heldout_alphabets": heldout_alphabet_names(config),  # [] unless heldout_alphabets
      "num_classes": {s: v.num_classes for s, v in splits.items()},
      "num_images": {s: int(v.images.shape[0]) for s, v in splits.items()},
      "history": history,
      "best_epoch": best_epoch,
      "ncm": ncm,
      "ncm_setting": f"{config.eval_num_classes}-way {config.eval_num_shots}-shot",
      "seconds": time.time() - t0,
  }
  atomic.atomic_write(os.path.join(folder, INFO_FILE),
                   lambda f: f.write((json.dumps(info, indent=2, sort_keys=True) + "\n").encode()))
  log(f"stage 1 done in {info['seconds']:.0f}s: epoch {best_epoch} chosen; stage 2 reads "
      f"--data_path={config.output_path} --dataset_name={config.dataset_name} "
      f"--embedding_dim={config.backbone.feature_dim}")
  return info


def config_from_flags(flags_values) -> PretrainConfig:
  """The PretrainConfig that parsed absl flags describe."""
  f = flags_values
  if f.backbone_from:
    backbone = backbone_config_of(f.backbone_from, f.feature_layers)[0]
  else:
    backbone = backbones.BackboneConfig(
        name=f.backbone, image_size=f.image_size, image_channels=f.image_channels,
        conv4_channels=tuple(int(c) for c in f.conv4_channels),
        wrn_depth=f.wrn_depth, wrn_width=f.wrn_width, wrn_dropout_rate=f.wrn_dropout_rate,
        feature_layers=f.feature_layers)
  return PretrainConfig(
      data_dir=f.data_dir, omniglot_zips=tuple(f.omniglot_zips or ()),
      omniglot_tfds=f.omniglot_tfds, tfds_data_dir=f.tfds_data_dir, image_dir=f.image_dir,
      output_path=f.output_path, dataset_name=f.dataset_name, backbone=backbone,
      backbone_from=f.backbone_from, head=f.head, heldout_alphabets=f.heldout_alphabets,
      epochs=f.epochs, batch_size=f.batch_size, learning_rate=f.learning_rate,
      weight_decay=f.weight_decay, augment_shift=f.augment_shift, max_classes=f.max_classes,
      num_eval_tasks=f.num_eval_tasks, eval_num_classes=f.eval_num_classes,
      eval_num_shots=f.eval_num_shots, seed=f.seed, progress=f.progress)


def define_flags() -> None:
  """Defines the stage-1 flags (called only when this module is the program)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  d, b = PretrainConfig(), backbones.BackboneConfig()
  flags.DEFINE_string("data_dir", d.data_dir,
                      "The Omniglot folder: images_*.npz, index.csv, splits/vinyals/*.txt.")
  flags.DEFINE_list("omniglot_zips", [], "The official images_background.zip, "
                    "images_evaluation.zip, read instead of the npz files (split files still "
                    "from data_dir).")
  flags.DEFINE_bool("omniglot_tfds", False, "Read Omniglot with tfds.load('omniglot') (needs "
                    "the network once) instead of the npz files (split files still from "
                    "data_dir).")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS's data_dir for --omniglot_tfds.")
  flags.DEFINE_string("image_dir", None, "Instead of Omniglot: <image_dir>/{train,val,test}/"
                      "<class>/<image> (e.g. miniImageNet images for the WRN-28-10).")
  flags.DEFINE_string("output_path", d.output_path, "Where <dataset_name>/center/*.pkl go (the "
                      "data_path of stage 2).")
  flags.DEFINE_string("dataset_name", d.dataset_name, "Folder name under output_path.")
  flags.DEFINE_enum("backbone", b.name, backbones.BACKBONES, "Feature extractor.")
  flags.DEFINE_integer("image_size", b.image_size, "Input side (28 for Omniglot, 84 for "
                       "miniImageNet).")
  flags.DEFINE_integer("image_channels", b.image_channels, "1 (Omniglot) or 3 (RGB).")
  flags.DEFINE_list("conv4_channels", [str(c) for c in b.conv4_channels],
                    "conv4: channels of the 4 blocks; the last is the embedding size.")
  flags.DEFINE_integer("wrn_depth", b.wrn_depth, "wide_resnet: depth d (28 in the paper).")
  flags.DEFINE_integer("wrn_width", b.wrn_width, "wide_resnet: widening k (10 in the paper).")
  flags.DEFINE_float("wrn_dropout_rate", b.wrn_dropout_rate, "wide_resnet: dropout in blocks.")
  flags.DEFINE_string("feature_layers", "", "Where the embeddings come from, '+'-joined to "
                      "concatenate: conv4 blockI_pool, blockI_avg, blockI_flat (I = 0..3; default "
                      "block3_pool, the last layer); wide_resnet layerL (L = 1, 3, ..., the main "
                      "path's convolutions; default the paper's layer 21 of WRN-28-10) or final.")
  flags.DEFINE_string("backbone_from", None, "A folder stage 1 wrote (<output_path>/<dataset_name>): "
                      "embed with its trained backbone instead of training one (e.g. other "
                      "--feature_layers into another --dataset_name); its backbone flags win.")
  flags.DEFINE_integer("heldout_alphabets", d.heldout_alphabets,
                       "Omniglot: train the backbone on the training classes of all but so many "
                       "alphabets (evenly spaced in the split file) and write train embeddings "
                       "of those alphabets' classes only, features the backbone never saw "
                       "(0: none held out).")
  flags.DEFINE_enum("head", d.head, HEADS, "Classifier head used in pre-training only.")
  flags.DEFINE_integer("epochs", d.epochs, "Epochs over the meta-training images.")
  flags.DEFINE_integer("batch_size", d.batch_size, "Images per step.")
  flags.DEFINE_float("learning_rate", d.learning_rate, "Adam's initial rate (cosine decay).")
  flags.DEFINE_float("weight_decay", d.weight_decay, "Decoupled weight decay (0: plain Adam).")
  flags.DEFINE_integer("augment_shift", d.augment_shift, "Random translation, in pixels.")
  flags.DEFINE_integer("max_classes", None, "Keep only the first classes of each split.")
  flags.DEFINE_integer("num_eval_tasks", d.num_eval_tasks, "Meta-validation tasks per epoch.")
  flags.DEFINE_integer("eval_num_classes", d.eval_num_classes, "N of those tasks.")
  flags.DEFINE_integer("eval_num_shots", d.eval_num_shots, "K of those tasks.")
  flags.DEFINE_integer("seed", d.seed, "Seed of initialisation, batches and augmentation.")
  flags.DEFINE_boolean("progress", d.progress, "Progress lines on stderr.")


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  progress.start_command(argv, "leo_tf.images.pretrain")
  try:
    config = config_from_flags(flags.FLAGS)
  except (ValueError, FileNotFoundError) as e:
    progress.command_error("leo_tf.images.pretrain", str(e))
  try:
    info = pretrain(config)
  except ValueError as e:
    sys.exit(f"leo_tf.images.pretrain: error: {e}")
  print(json.dumps({"best_epoch": info["best_epoch"], "ncm": info["ncm"],
                    "embedding_dim": info["embedding_dim"]}, indent=2))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=progress.flags_parser("leo_tf.images.pretrain"))
