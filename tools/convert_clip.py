"""Convert OpenAI's TorchScript CLIP file (RN50.pt, ViT-B-32.pt, ...) once into a state-dict file that
--backbone_weights reads without running code.

    python -m tools.convert_clip RN50.pt RN50.safetensors

Loading a TorchScript archive runs the code stored in it: convert only a file you trust (OpenAI's release).
The tensors are stored in float32 (OpenAI's are float16), without the three settings entries
(input_resolution, context_length, vocab_size) and the causal attention mask, which are not weights.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from models.clip import OPENAI_SETTINGS, safetensors_torch
from utils.errors import UserError, run_command


def convert(source: Path, out: Path) -> int:
    """Write `source`'s tensors to `out` (.safetensors); returns how many."""
    safetensors = safetensors_torch()
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: the output must be a .safetensors file")
    print(f"trusting {source}: reading a TorchScript archive runs the code stored in it")
    try:
        scripted = torch.jit.load(str(source), map_location="cpu")
    except Exception as e:  # torch raises many types for a file that is not a TorchScript archive
        raise UserError(f"{source}: not a TorchScript archive ({type(e).__name__}); state-dict files (.safetensors, "
                        f".bin, .pt) need no conversion: pass them to --backbone_weights as they are") from None
    state = {k: (v.float() if v.is_floating_point() else v).contiguous().clone()
             for k, v in scripted.state_dict().items()
             if k not in OPENAI_SETTINGS and not k.endswith("attn_mask")}  # a constant open_clip rebuilds
    out.parent.mkdir(parents=True, exist_ok=True)
    safetensors.save_file(state, str(out))
    assert safetensors.load_file(str(out)).keys() == state.keys()
    print(f"wrote {out}: {len(state)} tensors (float32); pass it with --backbone_weights {out}")
    return len(state)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="OpenAI's TorchScript .pt file")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    args = parser.parse_args(argv)
    convert(args.source, args.out)


if __name__ == "__main__":
    run_command(main)
