"""Command line: python -m elip_jax.convert --input PATH --output DIR [options]."""
from __future__ import annotations

import argparse
import sys

from elip_jax.convert.errors import ConversionError

EPILOG = """examples:
  # OpenAI's TorchScript release, an open_clip checkpoint, or a Hugging Face CLIPModel folder -> elip_jax
  python -m elip_jax.convert --input ViT-B-16.pt --output ckpt/vit-b-16 --model ViT-B-16
  python -m elip_jax.convert --input open_clip_model.safetensors --output ckpt/laion-b32 --model ViT-B-32-gelu
  python -m elip_jax.convert --input clip-vit-base-patch16/ --output ckpt/hf-b16 --image-size 256
  # and back
  python -m elip_jax.convert --input ckpt/vit-b-16 --to hf --output hf-vit-b-16/
  python -m elip_jax.convert --input ckpt/vit-b-16 --to open_clip --output vit-b-16.safetensors
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m elip_jax.convert", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert PyTorch CLIP checkpoints (OpenAI, open_clip, Hugging Face) to elip_jax and back. "
                    "Never runs code from a checkpoint.")
    parser.add_argument("--input", required=True, help="checkpoint file or folder (or, with --to, an elip_jax "
                        "checkpoint folder)")
    parser.add_argument("--output", required=True, help="elip_jax folder to write (or, with --to, the HF folder "
                        "or open_clip .safetensors file)")
    parser.add_argument("--to", choices=("hf", "open_clip"), help="export an elip_jax folder to PyTorch")
    parser.add_argument("--model", help="elip_jax model name to confirm the architecture against (e.g. ViT-B-16; "
                        "note: in elip_jax ViT-B-16 is OpenAI's QuickGELU model, ViT-B-16-gelu open_clip's)")
    parser.add_argument("--image-size", type=int, help="resample the positional embedding for this resolution")
    parser.add_argument("--activation", choices=("quick_gelu", "gelu"),
                        help="activation, for checkpoints that do not state it (default quick_gelu)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from elip_jax.convert.pipeline import convert_checkpoint, export_checkpoint  # after --help, not before
    try:
        if args.to:
            for flag, value in (("--model", args.model), ("--image-size", args.image_size),
                                ("--activation", args.activation)):
                if value is not None:
                    raise ConversionError(f"{flag} applies when converting to elip_jax, not with --to")
            path = export_checkpoint(args.input, args.to, args.output, overwrite=args.overwrite)
            print(f"wrote {args.to} checkpoint {path}")
        else:
            config = convert_checkpoint(args.input, args.output, model=args.model, image_size=args.image_size,
                                        activation=args.activation, overwrite=args.overwrite)
            print(f"wrote elip_jax checkpoint {args.output}: {config.to_dict()}")
    except ConversionError as err:
        print(f"error: {err}\nnothing was written to {args.output}", file=sys.stderr)
        return 2
    return 0
