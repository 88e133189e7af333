r"""Export a trained run for TF Serving: `python -m leo_tf.export`.

    python -m leo_tf.export --checkpoint_path=runs/leo --export_dir=/models/leo

takes the best checkpoint of the run in `checkpoint_path` (or the one named by
--checkpoint) and the run's config.json, and writes the next version of the
model under the model base path that TF Serving watches (leo_tf.serving.export;
signatures in leo_tf.serving.classification and leo_tf.serving.regression).
A version is published atomically; exporting a checkpoint that a version
already holds is refused unless --allow_duplicate.

    python -m leo_tf.export --checkpoint_path=runs/omniglot/20way1shot/leo \
        --export_dir=models/omniglot --backbone_dir=data/embeddings/omniglot

also puts stage 1's backbone (the folder leo_tf.images.pretrain wrote the run's
embeddings from) into the SavedModel, for the signatures that take images; it
runs on a request's images in chunks of --embed_chunk (default 32). --jit_compile
compiles LEO's part of every signature with XLA, for servers that run it.
"""

from __future__ import annotations

import os

from tensorflow.core.protobuf import saved_model_pb2

from leo_tf.images import pretrain
from leo_tf.serving import export
from leo_tf.serving import images
from leo_tf.serving import publish
from leo_tf.outer import lock
from leo_tf.outer import progress


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  progress.start_command(argv, "leo_tf.export")
  f = flags.FLAGS
  try:
    options = {name: True for name in ("full_outputs", "jit_compile") if f[name].value}
    if f.backbone_dir:
      options["front_end"] = images.FrontEnd(*pretrain.load_embedding_function(f.backbone_dir),
                                             chunk=f.embed_chunk, pad=f.embed_pad)
    elif f.embed_chunk != images.EMBED_CHUNK or not f.embed_pad:
      raise ValueError("--embed_chunk and --embed_pad apply to the image signatures only: give "
                       "--backbone_dir too, or leave them out.")
    problem = export.read_run_config(f.checkpoint_path).to_dict()["problem"] if options else ""
    if problem not in ("", "classification"):
      raise ValueError("--backbone_dir, --full_outputs and --jit_compile apply to classification "
                       "runs only.")
    version_dir = export.export_checkpoint(f.checkpoint_path, f.export_dir, f.checkpoint or None,
                                           allow_duplicate=f.allow_duplicate, **options)
  except (ValueError, OSError, lock.RunFolderInUse) as e:
    raise SystemExit(f"leo_tf.export: error: {e}") from None
  record = publish.read_export_config(version_dir)
  # The signatures as written (a regression export has serving_default only), read from
  # saved_model.pb without loading the model.
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(version_dir, "saved_model.pb"), "rb") as proto_file:
    saved_model.ParseFromString(proto_file.read())
  signatures = ", ".join(sorted(k for k in saved_model.meta_graphs[0].signature_def
                                if not k.startswith("__")))  # not __saved_model_init_op
  print(f"Exported {record['source']['checkpoint']} (step {record['source']['step']}) to "
        f"{version_dir}\nsignatures: {signatures}; serve with "
        f"TF Serving's --model_base_path={os.path.abspath(f.export_dir)} (see export/README.md).")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint_path", None,
                      "The training run's folder (holds config.json and best/).")
  flags.DEFINE_string("export_dir", None,
                      "The model base path: the version is written to <export_dir>/<N>.")
  flags.DEFINE_string("checkpoint", "",
                      "A checkpoint prefix to export instead of the run's best one.")
  flags.DEFINE_bool("allow_duplicate", False,
                    "Write a new version even if one in export_dir holds this checkpoint.")
  flags.DEFINE_string("backbone_dir", "",
                      "Stage 1's folder (<output_path>/<dataset_name> of leo_tf.images.pretrain, "
                      "with pretrain_info.json and backbone.weights.h5): adds the signatures "
                      "that take images (images, image_bytes and their _batched forms).")
  flags.DEFINE_integer("embed_chunk", images.EMBED_CHUNK,
                       "With --backbone_dir: images per backbone call, the last chunk of a "
                       "request padded with blank images. N K + Q of the one task shape you "
                       "serve (5-way 1-shot, 25 queries: 30) pads nothing and puts every task "
                       "in a chunk of its own, so that batched requests answer exactly as "
                       "each alone (export/README.md).")
  flags.DEFINE_bool("embed_pad", True,
                    "With --backbone_dir: pad the last chunk to --embed_chunk images (every "
                    "call the same shape). --noembed_pad: a request of fewer images is one call "
                    "of its own size; with a large --embed_chunk (e.g. 32 tasks' images) batched "
                    "requests run in few large calls, faster per image, and answers equal those "
                    "alone within rounding instead of exactly.")
  flags.DEFINE_bool("full_outputs", False,
                    "The batched and image signatures also return classifier_weights and "
                    "adapted_latents (image signatures: and the embeddings); by default they "
                    "return probabilities and classes only.")
  flags.DEFINE_bool("jit_compile", False,
                    "Compile LEO's adaptation and classifier in every signature with XLA (once "
                    "per task shape; about 5 times faster on a CPU). TF Serving then needs "
                    "--xla_cpu_compilation_enabled=true (export/README.md).")
  flags.mark_flags_as_required(["checkpoint_path", "export_dir"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main, flags_parser=progress.flags_parser("leo_tf.export"))
