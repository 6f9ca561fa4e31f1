"""Training throughput, and the share of a step spent outside the backbone.

Full step: the training step of train.py (one backbone pass over references and targets,
text encoder, compositor, loss, backward, AdamW) on in-memory random batches, so data
loading is excluded (bench_data.py measures that). Backbone alone: forward + backward of the
same 2B images through the ResNet trunk only. The overhead is 1 - backbone/step: what the
rest of MANME costs on top of the CNN that any CQBIR model pays for.

  .venv/bin/python benchmarks/bench_train.py --backbone resnet18 --crop 64          # CPU figure
  .venv/bin/python benchmarks/bench_train.py --backbone resnet50 --crop 224 --device cuda --amp bf16
  .venv/bin/python benchmarks/bench_train.py --count_ops --stage 1      # aten operations of one step, by part
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from config import resolve  # noqa: E402
from engine.trainer import compile_step  # noqa: E402
from losses import RetrievalLoss  # noqa: E402
from models import build_model  # noqa: E402
from utils.op_count import OpCounter  # noqa: E402
from utils.precision import amp_dtype, pick_device, set_precision  # noqa: E402

VOCAB, TEXT_LEN = 3775, 16


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, steps: int, warmup: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile(fn, device, rows: int) -> None:
    """One step under torch.profiler: the costliest operations on the device (or the CPU), and the
    kernel count, which says whether the step is bound by launches rather than arithmetic."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows))
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_ms = sum(e.device_time for e in kernels) / 1e3  # device_time is in microseconds
        print(f"{len(kernels)} kernels, {busy_ms:.1f} ms of kernel time in the profiled step")


def count_ops(model, loss_fn, optimizer, inputs, device, dtype) -> None:
    """One eager step of train.py's (after a first one, which builds AdamW's state) under an OpCounter."""
    def step(counter=None):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = loss_fn(model, model(*inputs))
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        with counter.label("optimizer") if counter else contextlib.nullcontext():
            optimizer.step()
    step()
    with OpCounter({"image encoder": model.image_encoder, "text encoder": model.text_encoder},
                   default="composition, scores and losses") as counter:
        step(counter)
    print(f"{'':32}{'aten operations':>16}{'of which not views':>20}")
    for part in ("image encoder", "text encoder", "composition, scores and losses", "optimizer"):
        print(f"{part:32}{counter.counts[part]:16d}{counter.computing[part]:20d}")
    print(f"RESULT ops_per_step total {counter.total} composition_loss "
          f"{counter.counts['composition, scores and losses']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet50"))
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--stage", type=int, default=2, choices=(1, 2), help="1: frozen backbone; 2: fine-tune all")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--fpn_smooth", default="full", choices=("full", "depthwise"),
                   help="top-down smoothing convs: full (the default of train.py) or depthwise (fewer FLOPs)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="full IEEE float32 matmuls/convs on CUDA (train.py --no-tf32); default TF32, as train.py")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile one full step and print its N costliest operations")
    p.add_argument("--count_ops", action="store_true",
                   help="count the aten operations one eager full step dispatches (forward, backward, AdamW), by "
                        "part, instead of timing; exact and device independent: a proxy for kernel launches")
    args = p.parse_args()

    finetune = args.stage == 2
    cfg = resolve({"dataset": "fashioniq", "backbone": args.backbone, "backbone_weights": "none",
                   "crop_size": args.crop, "batch_size": args.batch, "device": args.device, "amp": args.amp,
                   "img_finetune": finetune, "txt_finetune": finetune, "channels_last": args.channels_last,
                   "fpn_smooth": args.fpn_smooth, "tf32": args.tf32})
    device = pick_device(args.device)
    dtype = amp_dtype(cfg.amp, device)
    precision = set_precision(device, cfg.tf32, cfg.cudnn_benchmark)  # the function train.py calls
    model = build_model(cfg, VOCAB).to(device)
    model.set_finetune(finetune, finetune)
    model.train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    loss_fn = RetrievalLoss(cfg).to(device)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=cfg.lr)

    def loss_step(reference, target, tokens, lengths):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return loss_fn(model, model(reference, target, tokens, lengths))
    # --compile: train.py's compiled step (forward + loss, their backward; CUDA graphs on a GPU)
    step_fn = compile_step(loss_step, device) if args.compile else loss_step
    cudagraphs = args.compile and device.type == "cuda"

    g = torch.Generator().manual_seed(0)
    reference = torch.randn(args.batch, 3, args.crop, args.crop, generator=g).to(device, memory_format=memory_format)
    target = torch.randn(args.batch, 3, args.crop, args.crop, generator=g).to(device, memory_format=memory_format)
    tokens = torch.randint(5, VOCAB, (args.batch, TEXT_LEN), generator=g).to(device)
    lengths = torch.randint(4, TEXT_LEN + 1, (args.batch,), generator=g)

    def full_step():
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = step_fn(reference, target, tokens, lengths)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()

    trunk = model.image_encoder.backbone
    images = torch.cat([reference, target])

    def backbone_step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            c2, c3, c4 = trunk(images)
            total = c4.float().mean() + c3.float().mean() + c2.float().mean()
        if finetune:
            for q in trunk.parameters():
                q.grad = None
            total.backward()

    if not finetune:
        backbone_step = torch.no_grad()(backbone_step)

    def encoder_step():
        # the whole image encoder (backbone, top-down pathway, GeM, projections), backward as in training
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            total = model.image_encoder(images, stacked=True).mean()
        model.zero_grad(set_to_none=True)
        total.backward()

    if args.count_ops:
        count_ops(model, loss_fn, optimizer, (reference, target, tokens, lengths), device, dtype)
        return
    step_s = timed(full_step, device, args.steps, args.warmup)
    trunk_s = timed(backbone_step, device, args.steps, args.warmup)
    encoder_s = timed(encoder_step, device, args.steps, args.warmup)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; {args.backbone} {args.crop}px, batch {args.batch}, stage {args.stage}, "
          f"amp {str(dtype).split('.')[-1] if dtype else 'off'}{', channels_last' if args.channels_last else ''}"
          f"{', compiled' if args.compile else ''}; " + ", ".join(f"{k} {v}" for k, v in precision.items()))
    print(f"full training step: {step_s * 1e3:8.1f} ms  ({args.batch / step_s:8.1f} triplets/s)")
    passes = "fwd+bwd" if finetune else "fwd"
    print(f"backbone alone    : {trunk_s * 1e3:8.1f} ms  ({2 * args.batch / trunk_s:8.1f} images/s, {passes})")
    print(f"image encoder     : {encoder_s * 1e3:8.1f} ms  (backbone + top-down pathway + GeM + projections)")
    pathway, rest = max(0.0, encoder_s - trunk_s) / step_s, max(0.0, step_s - encoder_s) / step_s
    print(f"outside the backbone: {100 * pathway:.1f}% top-down pathway (the architecture's), "
          f"{100 * rest:.1f}% text encoder, composition, loss and optimizer")
    if args.profile:
        profile(full_step, device, args.profile)
    print(f"RESULT train_overhead {100 * max(0.0, 1 - trunk_s / step_s):.1f}%")


if __name__ == "__main__":
    main()
