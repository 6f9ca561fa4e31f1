"""Train MANME (or a baseline): stage 1 with frozen backbone and word embeddings, stage 2 fine-tunes.

Examples:
  python train.py --dataset fashioniq --exp_name fiq                       # stage 1
  python train.py --dataset fashioniq --exp_name fiq --img_finetune --txt_finetune   # stage 2: continues stage1/last.pt
  python train.py --dataset fashioniq --exp_name fiq --two_stage          # both
  python train.py ... --resume auto                                        # continue a run that died

Per-dataset presets (config.PRESETS, what the ARTEMIS release code does) override the defaults shown
below: e.g. Fashion200k trains resnet18 with batch 128 and 100 stage-2 epochs.
"""

from config import build_parser, given_flags
from engine.run import resolve_run_config, train
from tools.figures import validation_figure
from utils.errors import run_command


def main(argv=None) -> None:
    args = build_parser("data,model,train,eval,run", __doc__).parse_args(argv)
    explicit = given_flags(args)
    cfg = resolve_run_config(explicit)
    train(cfg, validation_hook=validation_figure if cfg.val_figure else None)


if __name__ == "__main__":
    run_command(main)
