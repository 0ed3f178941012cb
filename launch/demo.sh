#!/usr/bin/env bash
# The README's main command: sets up .venv, pre-trains a tiny CLIP with ELIP on the built-in offline dataset
# (generated on first use, about 25 s), evaluates it zero-shot on the test split and prints the result.
#   ./launch/demo.sh           ELIP (text-guided pruning and merging)
#   ./launch/demo.sh none      the unpruned baseline; also: elip_inline, evit, random
# Rerunning resumes (or, once finished, re-evaluates) the run in workdirs/demo-METHOD; delete it to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
method="${1:-elip}"
./launch/setup_env.sh
workdir="workdirs/demo-$method"
.venv/bin/python -m elip_jax.train --config "configs/demo.py:$method" --workdir "$workdir"
.venv/bin/python - "$workdir" <<'PY'
import json, sys
summary = json.load(open(f"{sys.argv[1]}/summary.json"))
(dataset, metrics), = summary["eval"].items()
chance = 1 / 16
speed = summary['final'].get('perf/images_per_s')
print(f"\n{summary['model']} pre-trained with {summary['reduction']} for {summary['steps']} steps "
      f"({speed or 0:.0f} images/s at the end, tokens per block {summary['tokens_per_block']})")
print(f"zero-shot {dataset} test: top-1 {metrics['acc1']:.1%} (chance {chance:.1%}, {metrics['acc1'] / chance:.1f}x), "
      f"top-5 {metrics['acc5']:.1%}, mean per-class recall {metrics['mean_per_class_recall']:.1%}")
print(f"details: {sys.argv[1]}/summary.json, metrics.jsonl, tensorboard/")
PY
