"""The efficiency table peers publish: parameters (trainable / total) and GFLOPs per query.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one forward pass at the
checkpoint's crop size (convolutions, matrix products and the GRU; a multiply-add counts 2).
A query costs its reference image, its text and the composition; each gallery image costs one
image embedding, paid once when the gallery is indexed; scoring a query against one gallery
image costs a few d-sized dot products (reported per 1000 gallery images).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

TEXT_TOKENS = 20   # a FashionIQ query: two captions of about 8 words, <start>, <and>, <end>


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@torch.no_grad()
def profile_model(model, cfg, device, text_tokens: int = TEXT_TOKENS) -> dict:
    """{"trainable_params", "total_params", "gflops_per_query", "gflops_image", "gflops_text_compose",
    "gflops_score_per_1k", "crop_size", "text_tokens"}. Trainable counts follow the stage the
    checkpoint was trained in (stage 1: backbone and word embeddings frozen)."""
    trainable, total = model.parameter_counts()
    was_training = model.training
    model.eval()
    images = torch.zeros(1, 3, cfg.crop_size, cfg.crop_size, device=device)
    tokens = torch.ones(1, text_tokens, dtype=torch.long, device=device)
    lengths = torch.tensor([text_tokens])
    reference = model.encode_images(images)
    text = model.encode_texts(tokens, lengths)
    query = model.compose(reference, text)
    gallery = {g: x.expand(1000, -1).contiguous() for g, x in reference.items()}

    image = count_flops(lambda: model.encode_images(images))
    text_compose = count_flops(lambda: model.compose(reference, model.encode_texts(tokens, lengths)))
    # 1 x 1000 scores stay below models.products' oneDNN threshold: aten matmuls, which the counter sees
    score = count_flops(lambda: model.score(query, gallery))
    model.train(was_training)
    return {"trainable_params": trainable, "total_params": total,
            "gflops_per_query": (image + text_compose) / 1e9, "gflops_image": image / 1e9,
            "gflops_text_compose": text_compose / 1e9, "gflops_score_per_1k": score / 1e9,
            "crop_size": cfg.crop_size, "text_tokens": text_tokens}


def format_profile(profile: dict) -> str:
    """Three lines for evaluate.py --profile."""
    return (f"parameters: {profile['trainable_params'] / 1e6:.2f} M trainable / "
            f"{profile['total_params'] / 1e6:.2f} M total\n"
            f"GFLOPs per query: {profile['gflops_per_query']:.3f} (reference image {profile['gflops_image']:.3f} + "
            f"text and composition {profile['gflops_text_compose']:.4f}; {profile['crop_size']} px, "
            f"{profile['text_tokens']} tokens; multiply-add = 2 FLOPs)\n"
            f"per gallery image: {profile['gflops_image']:.3f} GFLOPs to index (once), "
            f"{profile['gflops_score_per_1k'] * 1e3:.3f} MFLOPs per 1000 images to score a query")
