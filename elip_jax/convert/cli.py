"""Command line: python -m elip_jax.convert --input PATH --output DIR [options].

Bad input (a flag, a path, a checkpoint that cannot be read or states no activation) is one line
`error: ...` on stderr and exit code 2 (elip_jax.command_line); --output is checked before anything is read.
"""
from __future__ import annotations

import argparse

from elip_jax.command_line import ArgumentParser, UsageError, run_command
from elip_jax.convert.errors import ConversionError

EPILOG = """examples:
  # OpenAI's TorchScript release, an open_clip checkpoint, or a Hugging Face CLIPModel folder -> elip_jax
  python -m elip_jax.convert --input ViT-B-16.pt --output ckpt/vit-b-16
  python -m elip_jax.convert --input open_clip_model.safetensors --output ckpt/laion-b32 --model ViT-B-32-gelu
  python -m elip_jax.convert --input clip-vit-base-patch16/ --output ckpt/hf-b16 --image-size 256
  # and back, from a converted folder or a training workdir
  python -m elip_jax.convert --input ckpt/vit-b-16 --to hf --output hf-vit-b-16/
  python -m elip_jax.convert --input workdirs/run1 --to open_clip --output open_clip-run1/
"""



def parse_args(argv=None):
    parser = ArgumentParser(
        prog="python -m elip_jax.convert", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert PyTorch CLIP checkpoints (OpenAI, open_clip, Hugging Face) to elip_jax and back. "
                    "Never runs code from a checkpoint.")
    parser.add_argument("--input", required=True, help="checkpoint file or folder (or, with --to, an elip_jax "
                        "converted folder or training workdir)")
    parser.add_argument("--output", required=True, help="elip_jax folder to write (or, with --to, the HF folder, "
                        "or the open_clip folder: open_clip_model.safetensors + open_clip_config.json, written "
                        "into it if it exists)")
    parser.add_argument("--to", choices=("hf", "open_clip"), help="export an elip_jax checkpoint to PyTorch")
    parser.add_argument("--model", help="elip_jax model name to confirm the architecture against (e.g. ViT-B-16); "
                        "supplies heads and activation when the checkpoint does not state them (in elip_jax "
                        "ViT-B-16 is OpenAI's QuickGELU model, ViT-B-16-gelu open_clip's GELU one)")
    parser.add_argument("--image-size", type=int, help="resample the positional embedding for this resolution")
    parser.add_argument("--activation", choices=("quick_gelu", "gelu"),
                        help="activation, for checkpoints that do not state it (plain open_clip state dicts); "
                        "required then, unless --model names it")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return parser.parse_args(argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    if args.to:
        for flag, value in (("--model", args.model), ("--image-size", args.image_size),
                            ("--activation", args.activation)):
            if value is not None:
                raise UsageError(f"{flag} applies when converting to elip_jax, not with --to")
    from elip_jax.convert.pipeline import convert_checkpoint, export_checkpoint  # after --help, not before
    try:
        if args.to:
            path = export_checkpoint(args.input, args.to, args.output, overwrite=args.overwrite)
            print(f"wrote {args.to} checkpoint {path}")
            return 0
        config = convert_checkpoint(args.input, args.output, model=args.model, image_size=args.image_size,
                                    activation=args.activation, overwrite=args.overwrite)
    except ConversionError as error:
        raise ConversionError(f"{error} (nothing was written to {args.output})") from None
    from elip_jax.checkpoints.folder import read_config
    stated = read_config(args.output)[1].get("inferred_from", {})
    print(f"wrote elip_jax checkpoint {args.output}: {config.to_dict()}")
    print("  " + "; ".join(f"{field} {getattr(config, field)!r} from {where}" for field, where in stated.items()))
    return 0


def main(argv=None) -> int:
    return run_command(_main, argv)
