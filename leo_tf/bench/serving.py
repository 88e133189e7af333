r"""Serving speed of the image model, through TensorFlow's C API (leo_serve) and through Python.

    python -m leo_tf.bench.serving                      # the three image cases, both runtimes
    python -m leo_tf.bench.serving --cases=omniglot_5way1shot --runtimes=c --num_calls=50
    python -m leo_tf.bench.serving --export_dir=models/leo   # an export's embedding signatures

For each case an untrained image export is written to a temporary folder (stage
1's backbone with its initial weights and running statistics, and an untrained
LEO of D = the backbone's F: speed does not depend on the weights' values),
together with the bare backbone as its own SavedModel (signature `embed`:
uint8 [M, H, W, C] -> features [M, F]: stage 1's preprocessing and the backbone
in inference mode on all M images in one call, nothing else). Both are then
timed on the same images:

  single   one task per request (signature `images`): p50 and p99 of a request,
           and of the bare backbone on the request's N K + Q images; the
           difference is what LEO (checks, encoder, relation network, latent
           adaptation, fine-tuning, classifier) adds. Broken down by two more
           measurements in the same rounds: the backbone as the export runs it
           (`embed_chunked`: serving.images.FrontEnd.embed, chunks of
           EMBED_CHUNK images, the last padded), and LEO alone (the export's
           `serving_default` on the request's embeddings, as stage 1 computes
           them).
  batched  B tasks per request (signature `images_batched`) for B = 1, 8, 32:
           tasks/s and images/s from the median request, against the bare
           backbone's images/s on the same B (N K + Q) images in one call.

Cases (Q = 5 queries per class): Omniglot 5-way 1-shot and 20-way 1-shot (the
Omniglot pipeline's conv4, 28x28, grayscale; requests carry the 105x105
drawings as they are, real ones from ../shared/data/omniglot where it is
present, resized in the graph), and 5-way 1-shot 84x84 RGB with a reduced WRN
(--wrn_depth, --wrn_width; random pixels).

Runtimes: `c` is export/c_loader/leo_serve (built here with the system C
compiler): a request's time is from its TensorProtos in memory to the output
tensors (input tensors built, TF_SessionRun), as leo_serve measures it.
`python` is tf.saved_model.load in a fresh process that never imports leo_tf:
from numpy arrays to numpy outputs. Each measurement alternates between the
model and its bare backbone in rounds, so that a change in the machine's load
falls on both. Prints one JSON line per measurement, then the tables and the
goals (LEO adds at most 2 ms p50 to the bare backbone, C loader, Omniglot 5-way
1-shot; batched B = 32 at >= 80% of the bare backbone's images/s).

With --export_dir, times that export's embedding signatures (serving_default,
generate) instead, through Python, 5-way 1-shot and 5-shot with 75 queries.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

# No leo_tf import at the top: the Python measuring process loads this file alone
# (_MEASURE), as a server would load only the SavedModel.

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENT = os.path.join(REPO, "export", "c_loader", "client.py")
OMNIGLOT_DIR = os.path.join(REPO, "..", "shared", "data", "omniglot")

IMAGES = "images"  # the single-task image signature (serving.classification)
IMAGES_BATCHED = "images_batched"  # B tasks on axis 0
EMBED = "embed"  # the bare backbone's signature (backbone_module)
EMBED_CHUNKED = "embed_chunked"  # the backbone as the image signatures run it (FrontEnd.embed)
SERVING_DEFAULT = "serving_default"  # LEO on embeddings (serving.classification)
BATCH_SIZES = (1, 8, 32)
EMBED_CHUNK = 32  # serving.images.EMBED_CHUNK, the exports' default (not imported: see above)
RUNTIMES = ("c", "python")
ADDED_MS_GOAL = 2.0  # LEO adds at most this to the bare backbone's p50 (C, Omniglot 5-way 1-shot)
GOAL_CASE = "omniglot_5way1shot"
BATCHED_RATIO_GOAL = 0.8  # images/s of the batched signature at B = 32 / the bare backbone's

# (name, N, K, Q): the embedding-signature cases of --export_dir.
EMBEDDING_CASES = (("5-way 1-shot", 5, 1, 75), ("5-way 5-shot", 5, 5, 75))
EMBEDDING_SIGNATURES = ("serving_default", "generate")


@dataclasses.dataclass(frozen=True)
class ImageCase:
  """One image model and the tasks it is timed on."""

  name: str
  backbone: Any  # leo_tf.images.backbones.BackboneConfig
  convention: str  # stage 1's pixel convention: "omniglot" (ink threshold) or "image_dir"
  num_classes: int  # N
  num_shots: int  # K
  queries_per_class: int  # Q = N * queries_per_class
  request_side: int  # H = W of the request's images (resized in the graph to the backbone's S)
  drawings: bool  # real Omniglot drawings where ../shared/data/omniglot is present
  embed_chunk: int = EMBED_CHUNK  # the export's images per backbone call
  jit_compile: bool = False  # the export's LEO compiled with XLA (leo_tf.export --jit_compile)
  embed_pad: bool = True  # the last chunk padded to embed_chunk (leo_tf.export --embed_pad)

  @property
  def num_queries(self) -> int:
    return self.num_classes * self.queries_per_class

  @property
  def images_per_task(self) -> int:
    return self.num_classes * self.num_shots + self.num_queries


def image_cases(wrn_depth: int = 16, wrn_width: int = 1, embed_chunk: int = EMBED_CHUNK,
                jit_compile: bool = False, embed_pad: bool = True) -> dict[str, ImageCase]:
  """The three cases, by name; the WRN's depth and width as given; the exports' chunk
  (`python -m leo_tf.export --embed_chunk`) as given, 0 for each case's N K + Q; their
  LEO compiled with XLA or not (--jit_compile), their last chunk padded or not (--embed_pad)."""
  # pylint: disable=g-import-not-at-top
  from leo_tf.images import backbones
  from leo_tf.images import omniglot_pipeline
  # pylint: enable=g-import-not-at-top
  conv4 = omniglot_pipeline.OMNIGLOT_PRETRAIN.backbone  # conv4 (64, 64, 128, 256), 28x28x1
  wrn = backbones.BackboneConfig(name="wide_resnet", image_size=84, image_channels=3,
                                 wrn_depth=wrn_depth, wrn_width=wrn_width)
  cases = (
      ImageCase("omniglot_5way1shot", conv4, "omniglot", 5, 1, 5, 105, True),
      ImageCase("omniglot_20way1shot", conv4, "omniglot", 20, 1, 5, 105, True),
      ImageCase(f"rgb84_5way1shot_wrn{wrn_depth}_{wrn_width}", wrn, "image_dir", 5, 1, 5, 84,
                False),
  )
  cases = tuple(dataclasses.replace(case, embed_chunk=embed_chunk or case.images_per_task,
                                    jit_compile=jit_compile, embed_pad=embed_pad)
                for case in cases)
  return {case.name: case for case in cases}


def latest_version_dir(export_dir: str) -> str:
  """<export_dir>/<highest version>, or export_dir itself if it holds saved_model.pb."""
  if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
    return export_dir
  if not os.path.isdir(export_dir):
    raise FileNotFoundError(f"--export_dir {export_dir!r} is not a folder; pass the model base "
                            "path that python -m leo_tf.export wrote, or a version in it.")
  from leo_tf.serving import publish  # pylint: disable=g-import-not-at-top
  found = publish.versions(export_dir)
  if not found:
    raise FileNotFoundError(
        f"No version folder (<integer>/saved_model.pb) in {export_dir!r}; export one with "
        "python -m leo_tf.export --checkpoint_path=<run> --export_dir=<this folder>.")
  return os.path.join(export_dir, str(found[-1]))


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
  """p50, p99 and mean of call times, in milliseconds."""
  ms = 1e3 * np.asarray(seconds, np.float64)
  return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
          "mean_ms": float(np.mean(ms))}


# --------------------------------------------------------------------------------------
# The models and the requests (in the process that imports leo_tf).

def front_end(case: ImageCase, seed: int = 0):
  """Stage 1's embedding function for the case: its backbone, initial weights, the case's
  images per backbone call."""
  # pylint: disable=g-import-not-at-top
  import functools
  from leo_tf.images import backbones
  from leo_tf.images import pretrain
  from leo_tf.serving import images
  # pylint: enable=g-import-not-at-top
  backbone = backbones.build(case.backbone, seed=seed)
  preprocess = functools.partial(pretrain.preprocess_images, image_size=case.backbone.image_size,
                                 convention=case.convention)
  record = {"backbone": dataclasses.asdict(case.backbone), "convention": case.convention,
            "embedding_dim": case.backbone.feature_dim, "folder": "(untrained, benchmark)"}
  return images.FrontEnd(backbone, preprocess, record, chunk=case.embed_chunk,
                         pad=case.embed_pad)


def image_export(case: ImageCase, folder: str) -> str:
  """An untrained image export of the case under `folder`; returns its version folder."""
  # pylint: disable=g-import-not-at-top
  from leo_tf.classification import experiment
  from leo_tf.core.config import ModelConfig, OuterConfig
  from leo_tf.serving import export
  # pylint: enable=g-import-not-at-top
  config = experiment.RunConfig(
      model=ModelConfig(embedding_dim=case.backbone.feature_dim),  # n_z = 64, 5 + 5 steps
      outer=OuterConfig(checkpoint_path=os.path.join(folder, "run")), progress=False)
  model = experiment.build_learner(config)
  return export.export_model(model, config, os.path.join(folder, "leo"),
                             {"checkpoint": "(untrained, benchmark)"}, warmup=False,
                             front_end=front_end(case), jit_compile=case.jit_compile)


def backbone_module(front):
  """The bare backbone as a tf.Module: signatures `embed` (one call on all M images) and
  `embed_chunked` (FrontEnd.embed), uint8 [M, H, W, C] -> [M, F]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class Backbone(tf.Module):
    """Tracks the backbone's tf.Variables (as serving.images.FrontEnd.variables gives them)."""


    def __init__(self):
      super().__init__(name="bare_backbone")
      self.served_variables = front.variables()

      @tf.function(input_signature=[tf.TensorSpec([None, None, None, front.channels], tf.uint8,
                                                  name="images")], jit_compile=False)
      def embed(images):  # uint8 [M, H, W, C] -> {"embeddings": float32 [M, F]}
        return {"embeddings": front.backbone(front.preprocess(images), training=False)}

      self.embed = embed
      chunked = tf.function(front.embed, jit_compile=False, input_signature=(
          tf.TensorSpec([None, None, None, front.channels], tf.uint8, name="images"),))
      self.embed_chunked = tf.function(lambda images: {"embeddings": chunked(images)},
                                       input_signature=chunked.input_signature)

  return Backbone()


def backbone_export(case: ImageCase, folder: str) -> str:
  """The case's bare backbone (the same initial weights as image_export's) as a SavedModel."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  module = backbone_module(front_end(case))
  path = os.path.join(folder, "backbone")
  tf.saved_model.save(module, path, signatures={EMBED: module.embed,
                                                 EMBED_CHUNKED: module.embed_chunked})
  return path


def drawings(count: int, side: int, seed: int) -> np.ndarray:
  """`count` Omniglot drawings uint8 [count, side, side, 1], 0 ink on 255.

  From ../shared/data/omniglot (images_evaluation.npz) where it is present and
  side = 105; otherwise random strokes of the same ink density (about 10%).
  """
  rng = np.random.default_rng(seed)
  path = os.path.join(OMNIGLOT_DIR, "images_evaluation.npz")
  if side == 105 and os.path.isfile(path):
    with np.load(path, allow_pickle=False) as data:
      images = data["images"]  # bool [659, 20, 105, 105], True = background
    flat = images.reshape(-1, 105, 105)
    picked = flat[rng.choice(flat.shape[0], count, replace=count > flat.shape[0])]
    return np.where(picked, 255, 0).astype(np.uint8)[..., None]  # [count, 105, 105, 1]
  ink = rng.uniform(size=(count, side, side, 1)) < 0.1
  return np.where(ink, 0, 255).astype(np.uint8)


def task_images(case: ImageCase, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`batch` tasks: support uint8 [B, N, K, H, W, C], query [B, Q, H, W, C]."""
  n, k, q, side = case.num_classes, case.num_shots, case.num_queries, case.request_side
  c = case.backbone.image_channels
  count = batch * (n * k + q)
  if case.drawings:
    pixels = drawings(count, side, seed)
  else:
    pixels = np.random.default_rng(seed).integers(0, 256, (count, side, side, c), np.uint8)
  support = pixels[:batch * n * k].reshape(batch, n, k, side, side, c)
  query = pixels[batch * n * k:].reshape(batch, q, side, side, c)
  return support, query


@dataclasses.dataclass(frozen=True)
class Measurement:
  """What one timing is of: a signature of one model on one request."""

  id: str
  case: str
  kind: str  # single, backbone_single, chunked_single, embeddings_single, batched,
  # backbone_batched
  model: str  # "leo" or "backbone"
  signature: str
  inputs: str  # .npz of the request's arrays, by input name
  batch: int  # B tasks in the request
  images: int  # images in the request
  calls: int  # timed calls


def plan(cases: Sequence[ImageCase], folder: str, num_calls: int, min_calls: int,
         batch_sizes: Sequence[int]) -> tuple[dict[str, dict[str, str]], list[list[Measurement]]]:
  """Exports every case and writes its requests under `folder`.

  Returns:
    ({case: {"leo": version folder, "backbone": folder}}, pairs), each pair a
    measurement of the image model and the bare backbone's on the same images
    (the single-task one also the chunked backbone's and LEO's on their
    embeddings).
  """
  models, pairs = {}, []
  for case in cases:
    case_dir = os.path.join(folder, case.name)
    models[case.name] = {"leo": image_export(case, case_dir),
                         "backbone": backbone_export(case, case_dir)}

    def write(name, **arrays):
      path = os.path.join(case_dir, f"{name}.npz")
      np.savez(path, **arrays)
      return path

    support, query = task_images(case, 1, seed=1)
    images_n = case.images_per_task
    flat = np.concatenate([support.reshape((-1,) + support.shape[3:]),
                           query.reshape((-1,) + query.shape[2:])])  # [N K + Q, H, W, C]
    single = write("single", support_images=support[0], query_images=query[0])
    bare = write("backbone_single", images=flat)
    front = front_end(case)  # the exports' weights (the same seed)
    features = front.backbone(front.preprocess(flat), training=False).numpy()  # [N K + Q, F]
    n_k = case.num_classes * case.num_shots
    embeddings = write("embeddings_single",
                       support=features[:n_k].reshape(case.num_classes, case.num_shots, -1),
                       query=features[n_k:])
    pairs.append([
        Measurement(f"{case.name}/single", case.name, "single", "leo", IMAGES, single, 1,
                    images_n, num_calls),
        Measurement(f"{case.name}/backbone_single", case.name, "backbone_single", "backbone",
                    EMBED, bare, 1, images_n, num_calls),
        Measurement(f"{case.name}/chunked_single", case.name, "chunked_single", "backbone",
                    EMBED_CHUNKED, bare, 1, images_n, num_calls),
        Measurement(f"{case.name}/embeddings_single", case.name, "embeddings_single", "leo",
                    SERVING_DEFAULT, embeddings, 1, images_n, num_calls)])
    for b in batch_sizes:
      support, query = task_images(case, b, seed=2 + b)
      flat = np.concatenate([support.reshape((-1,) + support.shape[3:]),
                             query.reshape((-1,) + query.shape[2:])])  # [B (N K + Q), H, W, C]
      calls = max(min_calls, num_calls // b)
      batched = write(f"batched_{b}", support_images=support, query_images=query)
      bare = write(f"backbone_batched_{b}", images=flat)
      pairs.append([
          Measurement(f"{case.name}/batched_{b}", case.name, "batched", "leo", IMAGES_BATCHED,
                      batched, b, b * images_n, calls),
          Measurement(f"{case.name}/backbone_batched_{b}", case.name, "backbone_batched",
                      "backbone", EMBED, bare, b, b * images_n, calls)])
  return models, pairs


# --------------------------------------------------------------------------------------
# Timing: the same rounds in both runtimes.

def rounds_of(calls: int, rounds: int) -> list[int]:
  """`calls` split into `rounds` parts that differ by at most one (the first ones larger)."""
  return [calls // rounds + (1 if r < calls % rounds else 0) for r in range(rounds)]


def time_pairs(pairs, run_calls, num_warmup: int, rounds: int) -> dict[str, list[float]]:
  """Times each pair in alternating rounds: {measurement id: seconds of each call}.

  Args:
    pairs: lists of Measurements timed together.
    run_calls: (measurement, count) -> seconds of `count` calls, one each
      (count may be 0).
    num_warmup: untimed calls of each measurement first.
    rounds: each measurement's calls are split into so many rounds, and the
      pair's measurements take turns round by round.
  """
  seconds: dict[str, list[float]] = {}
  for pair in pairs:
    for m in pair:
      run_calls(m, num_warmup)
      seconds[m.id] = []
    for r in range(rounds):
      for m in pair:
        seconds[m.id] += run_calls(m, rounds_of(m.calls, rounds)[r])
  return seconds


def time_c(models, pairs, binary: str, num_warmup: int, rounds: int) -> dict[str, list[float]]:
  """The pairs through leo_serve: one process per model, kept for all its measurements."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("c_loader_client", CLIENT)
  client = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(client)
  seconds: dict[str, list[float]] = {}
  for case in models:
    loaders = {name: client.Loader(binary, path) for name, path in models[case].items()}
    try:
      requests = {}

      def run_calls(m, count):
        if count == 0:
          return []
        if m.id not in requests:
          with np.load(m.inputs) as data:
            requests[m.id] = {key: client.tensor_proto_bytes(data[key]) for key in data.files}
        return loaders[m.model].time(count, m.signature, requests[m.id])

      seconds.update(time_pairs([p for p in pairs if p[0].case == case], run_calls,
                                num_warmup, rounds))
    finally:
      for loader in loaders.values():
        loader.close()
  return seconds


def time_python(models, pairs, num_warmup: int, rounds: int) -> dict[str, list[float]]:
  """The pairs through tf.saved_model.load; runs in the measuring process (_MEASURE)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seconds: dict[str, list[float]] = {}
  for case in models:
    loaded = {name: tf.saved_model.load(path) for name, path in models[case].items()}
    requests = {}

    def run_calls(m, count):
      if m.id not in requests:
        with np.load(m.inputs) as data:
          requests[m.id] = {key: data[key] for key in data.files}
      fn = loaded[m.model].signatures[m.signature]
      out = []
      for _ in range(count):
        start = time.perf_counter()
        outputs = fn(**{key: tf.constant(value) for key, value in requests[m.id].items()})
        _ = {key: value.numpy() for key, value in outputs.items()}
        out.append(time.perf_counter() - start)
      return out

    seconds.update(time_pairs([p for p in pairs if p[0].case == case], run_calls,
                              num_warmup, rounds))
  return seconds


# The measuring process: imports this file by path (not the leo_tf package) and
# TensorFlow, so it loads the SavedModels the way a server would.
_MEASURE = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bench_serving", {os.path.abspath(__file__)!r})
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_serving"] = bench  # where its dataclasses look themselves up
spec.loader.exec_module(bench)
job, out = sys.argv[1:]
with open(job) as f:
  job = json.load(f)
if job["what"] == "images":
  pairs = [[bench.Measurement(**m) for m in pair] for pair in job["pairs"]]
  results = bench.time_python(job["models"], pairs, job["num_warmup"], job["rounds"])
else:
  results = bench.measure_embeddings(job["version_dir"], job["num_calls"], job["num_warmup"])
leaked = [m for m in sys.modules if m == "leo_tf" or m.startswith("leo_tf.")]
if leaked:
  raise RuntimeError(f"the measuring process imported {{leaked}}; it must load the model alone")
with open(out, "w") as f:
  json.dump(results, f)
"""


def run_measuring_process(job: dict[str, Any], folder: str) -> Any:
  """Runs _MEASURE on `job` in a fresh Python; returns what it wrote."""
  job_path, out = os.path.join(folder, "job.json"), os.path.join(folder, "results.json")
  with open(job_path, "w") as f:
    json.dump(job, f)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
  subprocess.run([sys.executable, "-c", _MEASURE, job_path, out], check=True, env=env)
  with open(out) as f:
    return json.load(f)


def summarize(pairs, seconds_by_runtime) -> list[dict[str, Any]]:
  """One result per (runtime, measurement): percentiles, tasks/s and images/s."""
  results = []
  for runtime, seconds in seconds_by_runtime.items():
    for pair in pairs:
      for m in pair:
        stats = percentiles_ms(seconds[m.id])
        median_s = 1e-3 * stats["p50_ms"]
        results.append({
            "runtime": runtime, "case": m.case, "kind": m.kind, "signature": m.signature,
            "batch": m.batch, "images": m.images, "calls": len(seconds[m.id]),
            **{key: round(value, 3) for key, value in stats.items()},
            "tasks_per_s": round(m.batch / median_s, 2),
            "images_per_s": round(m.images / median_s, 1)})
  return results


def goals(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The two goals, from results of the same run: per runtime and case."""
  by = {(r["runtime"], r["case"], r["kind"], r["batch"]): r for r in results}
  out = []
  for (runtime, case, kind, batch), r in sorted(by.items()):
    if kind == "single":
      bare = by[(runtime, case, "backbone_single", batch)]
      added = r["p50_ms"] - bare["p50_ms"]
      out.append({"runtime": runtime, "case": case, "goal": "adaptation_added_p50_ms",
                  "value": round(added, 3), "target": f"<= {ADDED_MS_GOAL}",
                  "met": added <= ADDED_MS_GOAL,
                  "judged": runtime == "c" and case == GOAL_CASE})
    if kind == "batched" and batch == max(b for (rt, c, k, b) in by if k == "batched"):
      bare = by[(runtime, case, "backbone_batched", batch)]
      ratio = r["images_per_s"] / bare["images_per_s"]
      out.append({"runtime": runtime, "case": case, "goal": f"batched_B{batch}_images_ratio",
                  "value": round(ratio, 3), "target": f">= {BATCHED_RATIO_GOAL}",
                  "met": ratio >= BATCHED_RATIO_GOAL, "judged": runtime == "c" and batch == 32})
  return out


def format_tables(results: list[dict[str, Any]], goal_rows: list[dict[str, Any]]) -> str:
  """The single-task table, the batched table and the goals, as text."""
  by = {(r["runtime"], r["case"], r["kind"], r["batch"]): r for r in results}
  lines = [f"{'runtime':7s} {'case':26s} {'images':>6s} {'p50 ms':>8s} {'p99 ms':>8s} "
           f"{'backbone p50':>12s} {'backbone p99':>12s} {'LEO adds p50':>12s} "
           f"{'chunked p50':>11s} {'LEO alone p50':>13s}"]
  for (runtime, case, kind, batch), r in by.items():
    if kind != "single":
      continue
    bare = by[(runtime, case, "backbone_single", batch)]
    chunked = by[(runtime, case, "chunked_single", batch)]
    alone = by[(runtime, case, "embeddings_single", batch)]
    lines.append(f"{runtime:7s} {case:26s} {r['images']:6d} {r['p50_ms']:8.2f} "
                 f"{r['p99_ms']:8.2f} {bare['p50_ms']:12.2f} {bare['p99_ms']:12.2f} "
                 f"{r['p50_ms'] - bare['p50_ms']:12.2f} {chunked['p50_ms']:11.2f} "
                 f"{alone['p50_ms']:13.2f}")
  lines += ["", f"{'runtime':7s} {'case':26s} {'B':>3s} {'p50 ms':>9s} {'tasks/s':>9s} "
                f"{'images/s':>9s} {'backbone images/s':>17s} {'ratio':>6s}"]
  for (runtime, case, kind, batch), r in by.items():
    if kind != "batched":
      continue
    bare = by[(runtime, case, "backbone_batched", batch)]
    lines.append(f"{runtime:7s} {case:26s} {batch:3d} {r['p50_ms']:9.2f} "
                 f"{r['tasks_per_s']:9.1f} {r['images_per_s']:9.1f} "
                 f"{bare['images_per_s']:17.1f} {r['images_per_s'] / bare['images_per_s']:6.3f}")
  lines.append("")
  for g in goal_rows:
    verdict = ("met" if g["met"] else "MISSED") if g["judged"] else (
        "(met)" if g["met"] else "(missed)")
    lines.append(f"goal {g['goal']} {g['target']}: {g['runtime']} {g['case']} "
                 f"{g['value']} {verdict}")
  lines.append("(chunked: the backbone as the image signatures run it, EMBED_CHUNK images a "
               "call; LEO alone: serving_default on the request's embeddings)")
  lines.append("(verdicts in brackets are reported alongside: the goals are judged on the C "
               f"loader, the added time on {GOAL_CASE}, the batched ratio at B = 32)")
  return "\n".join(lines)


def run_image_benchmark(case_names: Sequence[str], runtimes: Sequence[str] = RUNTIMES,
                        num_calls: int = 100, min_calls: int = 5, num_warmup: int = 3,
                        rounds: int = 5, batch_sizes: Sequence[int] = BATCH_SIZES,
                        wrn_depth: int = 16, wrn_width: int = 1,
                        binary: str | None = None, embed_chunk: int = EMBED_CHUNK,
                        jit_compile: bool = False, embed_pad: bool = True
                        ) -> tuple[list, list]:
  """Exports the cases, times them in each runtime; returns (results, goal rows)."""
  known = image_cases(wrn_depth, wrn_width, embed_chunk, jit_compile, embed_pad)
  unknown = [name for name in case_names if name not in known]
  if unknown:
    raise ValueError(f"unknown --cases {unknown}; the cases are {sorted(known)}.")
  bad = [r for r in runtimes if r not in RUNTIMES]
  if bad:
    raise ValueError(f"unknown --runtimes {bad}; choose from {list(RUNTIMES)}.")
  with tempfile.TemporaryDirectory() as folder:
    models, pairs = plan([known[name] for name in case_names], folder, num_calls, min_calls,
                         batch_sizes)
    seconds = {}
    for runtime in runtimes:
      if runtime == "c":
        if binary is None:
          import importlib.util  # pylint: disable=g-import-not-at-top
          spec = importlib.util.spec_from_file_location("c_loader_client", CLIENT)
          client = importlib.util.module_from_spec(spec)
          spec.loader.exec_module(client)
          binary = client.build(os.path.join(folder, "leo_serve"))
        seconds["c"] = time_c(models, pairs, binary, num_warmup, rounds)
      else:
        job = {"what": "images", "models": models, "num_warmup": num_warmup, "rounds": rounds,
               "pairs": [[dataclasses.asdict(m) for m in pair] for pair in pairs]}
        seconds["python"] = run_measuring_process(job, folder)
  results = summarize(pairs, seconds)
  return results, goals(results)


# --------------------------------------------------------------------------------------
# --export_dir: an export's embedding signatures through Python.

def measure_embeddings(version_dir: str, num_calls: int, num_warmup: int
                       ) -> list[dict[str, Any]]:
  """Times every (embedding signature, case); runs in the measuring process."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(version_dir)
  embedding_dim = int(loaded.signatures["serving_default"].structured_outputs[
      "classifier_weights"].shape[-1])
  rng = np.random.default_rng(0)
  results = []
  for signature in EMBEDDING_SIGNATURES:
    fn = loaded.signatures[signature]
    for name, n, k, q in EMBEDDING_CASES:
      # A few different tasks, so no call sees the previous call's inputs.
      tasks = [(rng.uniform(0, 1, (n, k, embedding_dim)).astype(np.float32),
                rng.uniform(0, 1, (q, embedding_dim)).astype(np.float32)) for _ in range(8)]
      for i in range(num_warmup):
        fn(support=tf.constant(tasks[i % 8][0]), query=tf.constant(tasks[i % 8][1]))
      seconds = []
      for i in range(num_calls):
        support, query = tasks[i % len(tasks)]
        start = time.perf_counter()
        outputs = fn(support=tf.constant(support), query=tf.constant(query))
        _ = {key: value.numpy() for key, value in outputs.items()}
        seconds.append(time.perf_counter() - start)
      results.append({"runtime": "python", "signature": signature, "case": name,
                      "num_queries": q, "embedding_dim": embedding_dim, "calls": num_calls,
                      **{key: round(value, 3) for key, value in percentiles_ms(seconds).items()}})
  return results


def format_embedding_table(results: list[dict[str, Any]]) -> str:
  lines = [f"{'signature':16s} {'case':13s} {'Q':>3s} {'p50 ms':>8s} {'p99 ms':>8s} "
           f"{'mean ms':>8s}"]
  for r in results:
    lines.append(f"{r['signature']:16s} {r['case']:13s} {r['num_queries']:3d} "
                 f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['mean_ms']:8.2f}")
  return "\n".join(lines)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from leo_tf.outer import progress  # pylint: disable=g-import-not-at-top
  progress.start_command(argv, "leo_tf.bench.serving")
  f = flags.FLAGS
  try:
    if f.export_dir:
      version_dir = latest_version_dir(f.export_dir)
      with tempfile.TemporaryDirectory() as folder:
        results = run_measuring_process({"what": "embeddings", "version_dir": version_dir,
                                         "num_calls": f.num_calls,
                                         "num_warmup": f.num_warmup}, folder)
      for r in results:
        print(json.dumps(dict(r, version_dir=version_dir), sort_keys=True))
      print(format_embedding_table(results))
      return
    cases = f.cases or list(image_cases(f.wrn_depth, f.wrn_width))
    results, goal_rows = run_image_benchmark(
        cases, f.runtimes, f.num_calls, f.min_calls, f.num_warmup, f.rounds,
        [int(b) for b in f.batch_sizes], f.wrn_depth, f.wrn_width, embed_chunk=f.embed_chunk,
        jit_compile=f.jit_compile, embed_pad=f.embed_pad)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"leo_tf.bench.serving: error: {e}") from None
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  exports = {"jit_compile": f.jit_compile, "embed_chunk": f.embed_chunk or "N K + Q",
             "embed_pad": f.embed_pad}
  for r in results + goal_rows:
    print(json.dumps(dict(r, tensorflow=tf.__version__, **exports), sort_keys=True))
  print(format_tables(results, goal_rows))
  print(f"(the image exports: LEO with jit_compile={f.jit_compile}, embed_chunk="
        f"{exports['embed_chunk']}, embed_pad={f.embed_pad})")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_list("cases", [], "Image cases to time (default: all): omniglot_5way1shot, "
                    "omniglot_20way1shot, rgb84_5way1shot_wrn<depth>_<width>.")
  flags.DEFINE_list("runtimes", list(RUNTIMES), "c (leo_serve, TensorFlow's C API) and/or "
                    "python (tf.saved_model.load).")
  flags.DEFINE_list("batch_sizes", [str(b) for b in BATCH_SIZES],
                    "B, tasks per request of the batched signature.")
  flags.DEFINE_integer("num_calls", 100, "Timed single-task requests; batched ones: "
                       "max(--min_calls, num_calls / B).")
  flags.DEFINE_integer("min_calls", 5, "Timed batched requests at least.")
  flags.DEFINE_integer("num_warmup", 3, "Untimed calls before each measurement.")
  flags.DEFINE_integer("rounds", 5, "Rounds that alternate the model and its bare backbone.")
  flags.DEFINE_integer("wrn_depth", 16, "Depth of the reduced WRN of the 84x84 RGB case.")
  flags.DEFINE_integer("wrn_width", 1, "Width k of the reduced WRN (F = 64 k).")
  flags.DEFINE_integer("embed_chunk", EMBED_CHUNK, "The image exports' images per backbone call "
                       "(leo_tf.export --embed_chunk); 0: each case's N K + Q, no padding.")
  flags.DEFINE_bool("jit_compile", False, "The image exports' LEO compiled with XLA "
                    "(leo_tf.export --jit_compile); the bare backbone stays as it is.")
  flags.DEFINE_bool("embed_pad", True, "The image exports pad the last chunk to --embed_chunk "
                    "(leo_tf.export --embed_pad); false: a request of fewer images is one call.")
  flags.DEFINE_string("export_dir", "", "Instead: time this export's embedding signatures "
                      "(its latest version, or a version folder) through Python.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from leo_tf.outer import progress  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main, flags_parser=progress.flags_parser("leo_tf.bench.serving"))
