"""The golden ranking as an oracle (an upper bound for the predictor): zero-shot top-1 when each image drops the
patches its OWN golden ranking removed, at the prune layer, and the same pipeline unpruned (as a check against
`python -m elip_jax.evaluate`).

    python -m elip_jax.patch_ranking oracle --pretrained DIR --rankings DIR [--batch-size B] [--output FILE.json]

The rankings must be of the evaluated split itself (golden --split test). Images are read and preprocessed as the
evaluation reads them (resize the shorter side, centre crop); the class embeddings are the zero-shot classifier's
(elip_jax.evaluate.classifier). FLOPs per image are XLA's, of the image forward with the patches dropped (gathered:
the sequence after the prune layer holds CLS and the kept patches only), as the pruned model computes it minus the
predictor.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np

from elip_jax.command_line import ArgumentParser, UsageError, check_output_file

PROG = "python -m elip_jax.patch_ranking oracle"


def kept_features(module, images, kept, prune_layer: int):
    """CLIP.apply method: image features [B, E] with only the patches `kept` [B, K] (sorted indices) after the
    prune layer (protected tokens, if any, kept)."""
    import jax.numpy as jnp
    from elip_jax.patch_ranking.golden import prefix_tokens, suffix_features
    x = prefix_tokens(module, images, prune_layer)
    p = module.config.num_patches
    patches = jnp.take_along_axis(x[:, 1:1 + p], kept[..., None], axis=1)
    x = jnp.concatenate([x[:, :1], patches, x[:, 1 + p:]], axis=1)
    return suffix_features(module, x, None, prune_layer)


def oracle_accuracy(model, variables, images_uint8, labels, rankings, removed: int, prune_layer: int,
                    class_embeddings, batch_size: int = 256) -> dict:
    """{'top1', 'top1_unpruned', 'flops_per_image', 'flops_per_image_unpruned', 'images'} over the images whose
    ranking is known (rows of -1 are left out)."""
    import jax
    import jax.numpy as jnp
    from elip_jax.accounting import xla_flops
    from elip_jax.data import normalize_images

    usable = rankings[:, 0] >= 0
    images_uint8, labels, rankings = images_uint8[usable], labels[usable], rankings[usable]
    p = rankings.shape[1]
    keep_sets = {"oracle": np.sort(rankings[:, removed:], axis=1), "unpruned": np.tile(np.arange(p), (len(labels), 1))}
    classes = jnp.asarray(class_embeddings, jnp.float32)
    result = {"images": int(len(labels))}
    for name, kept in keep_sets.items():
        @functools.partial(jax.jit)
        def predict(variables, images, kept):
            features = model.apply(variables, normalize_images(images).astype(model.config.compute_dtype), kept,
                                   prune_layer, method=kept_features)
            features = features / jnp.linalg.norm(features, axis=-1, keepdims=True)
            return jnp.argmax(features @ classes.T, axis=-1)

        correct = 0
        for start in range(0, len(labels), batch_size):
            end = min(start + batch_size, len(labels))
            correct += int((np.asarray(predict(variables, images_uint8[start:end], kept[start:end]))
                            == labels[start:end]).sum())
        # FLOPs as elip_jax.evaluate counts them: the image forward on one float image, normalised features
        encode = jax.jit(lambda v, x, k: model.apply(v, x, k, prune_layer, method=kept_features))
        compiled = encode.lower(variables, jax.ShapeDtypeStruct((1,) + images_uint8.shape[1:], jnp.float32),
                                jax.ShapeDtypeStruct((1, kept.shape[1]), jnp.int32)).compile()
        suffix = "" if name == "oracle" else "_unpruned"
        result["top1" + suffix] = correct / max(len(labels), 1)
        result["flops_per_image" + suffix] = xla_flops(compiled) or float("nan")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog=PROG, description="zero-shot top-1 with each image's own golden ranking (oracle)")
    parser.add_argument("--pretrained", required=True, help="the model the rankings were made with")
    parser.add_argument("--rankings", required=True, help="golden rankings of the evaluated split")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--output", default=None, help="write the result as JSON here too")
    args = parser.parse_args(argv)
    if args.output:
        check_output_file(args.output, suffix=".json")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1; got {args.batch_size}")
    from elip_jax.patch_ranking.rankings import read_rankings
    reader = read_rankings(args.rankings)
    import jax
    from jax.sharding import Mesh
    from elip_jax import checkpoints
    from elip_jax.data import open_source
    from elip_jax.data.eval_pipeline import PrepareEvalExample
    from elip_jax.evaluate import sources
    from elip_jax.evaluate.classifier import zeroshot_classifier
    from elip_jax.evaluate.classnames import zeroshot_prompts
    from elip_jax.fileio import atomic_write_json
    from elip_jax.patch_ranking.golden_cli import read_images
    meta = reader.meta
    model, variables, name = checkpoints.load(args.pretrained, reduction="none")
    if model.config.num_patches != int(meta["num_patches"]):
        raise UsageError(f"--rankings rank {meta['num_patches']} patches; --pretrained has {model.config.num_patches}")
    prompts = zeroshot_prompts(meta["dataset"], sources.tfds_label_names(meta["dataset"], meta.get("data_dir"),
                                                                          "label"))
    classes = zeroshot_classifier(model, variables, prompts, Mesh(np.asarray(jax.devices()), ("data",)))
    source = open_source(meta["dataset"], meta["split"], meta.get("data_dir"))
    images, labels, usable = read_images(source, PrepareEvalExample("image", "label", model.config.image_size), 0,
                                         reader.num_examples)
    rankings = np.where(usable[:, None], reader.rankings, -1)
    result = oracle_accuracy(model, variables, images, labels, rankings, reader.removed,
                             int(meta["settings"]["prune_layer"]), classes, args.batch_size)
    result.update(model=name, dataset=meta["dataset"], split=meta["split"], removed=reader.removed,
                  num_patches=int(meta["num_patches"]), prune_layer=int(meta["settings"]["prune_layer"]))
    print(f"oracle (golden ranking of each image, {reader.removed} of {meta['num_patches']} patches removed before "
          f"block {result['prune_layer']}): top-1 {result['top1']:.4f} at {result['flops_per_image'] / 1e6:.1f} "
          f"MFLOPs/image; unpruned {result['top1_unpruned']:.4f} at "
          f"{result['flops_per_image_unpruned'] / 1e6:.1f} MFLOPs/image ({result['images']} images)")
    if args.output:
        atomic_write_json(args.output, result)
    return 0
