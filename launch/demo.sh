#!/usr/bin/env bash
# The README's main command: pre-trains a tiny CLIP with ELIP on the built-in dataset, evaluates it zero-shot,
# and shows what pruning saved against the unpruned model.
#
#   ./launch/demo.sh [METHOD] [--config.KEY=VALUE ...]
#     METHOD   elip (default: text-guided pruning and merging), none (the unpruned baseline), elip_inline,
#              evit or random
#     --config.KEY=VALUE ...  passed to the trainer as they are. CI runs the short variant
#              `./launch/demo.sh elip --config.num_steps=30`: the same code path, fewer steps.
#
# What it does, and about how long each part takes on 2 CPU cores (about 8 minutes in all: 8 min 41 s measured on
# a fresh clone, 2 cores shared with other work):
#   0. installs the runtime requirements into .venv (first run only; a minute or more, network needed)
#   1. generates the built-in dataset: 24,000 captioned pictures of coloured shapes, drawn on this machine,
#      nothing downloaded (first run only, about 30 s)
#   2. compiles the training step (about 30 s), then trains 500 steps of 128 image-text pairs (about 7 minutes)
#   3. evaluates zero-shot classification of the 16 shape classes on the test split (about 10 s)
#   4. compiles the unpruned model's training step, without running it, to compare XLA's FLOP and memory
#      counts of one step (about 20 s)
# Rerunning resumes (or, once finished, re-evaluates) the run in workdirs/demo-METHOD; delete it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
method=elip
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
  method="$1"
  shift
fi
echo "elip_jax demo: pre-training a tiny CLIP with $method on the built-in shapes dataset, on CPU;"
echo "about 8 minutes on 2 CPU cores (the first run also installs .venv and generates the dataset)."
./launch/setup_env.sh
workdir="workdirs/demo-$method"
.venv/bin/python -m elip_jax.train --config "configs/demo.py:$method" --workdir "$workdir" "$@"
echo
.venv/bin/python -m elip_jax.train --config "configs/demo.py:$method" --workdir "$workdir" --compare_costs "$@"
.venv/bin/python - "$workdir" "$method" <<'PY'
import json, sys
workdir, method = sys.argv[1:3]
summary = json.load(open(f"{workdir}/summary.json"))
model = json.load(open(f"{workdir}/model_config.json"))
(dataset, metrics), = summary["eval"].items()
patches = (model["image_size"] // model["patch_size"]) ** 2
tokens = summary["tokens_per_block"]
chance = 1 / 16
speed = summary["final"].get("perf/images_per_s")
print(f"\n{summary['model']} CLIP pre-trained with {method} for {summary['steps']} steps "
      f"({speed or 0:.0f} images/s at the end)")
print(f"tokens per block {tokens}: how many tokens each of the image tower's {len(tokens)} transformer blocks "
      f"processes; a {model['image_size']}x{model['image_size']} image is 1 class token + {patches} patches of "
      f"{model['patch_size']}x{model['patch_size']} pixels = {1 + patches} tokens, all of which the unpruned model "
      "keeps in every block." + ("" if method == "none" else
      f" {method} drops (or merges) the patches the caption makes least relevant, so later blocks process fewer."))
if "error" in metrics:
    print(f"zero-shot {dataset} test: not evaluated ({metrics['error']})")
else:
    print(f"zero-shot {dataset} test: top-1 {metrics['acc1']:.1%} (chance {chance:.1%}, "
          f"{metrics['acc1'] / chance:.1f}x), top-5 {metrics['acc5']:.1%}, "
          f"mean per-class recall {metrics['mean_per_class_recall']:.1%}")
if method != "none":
    print("the unpruned baseline's accuracy, to compare with: ./launch/demo.sh none   (the same demo, no pruning)")
print(f"details: {workdir}/summary.json, metrics.jsonl, tensorboard/")
PY
