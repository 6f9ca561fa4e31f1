"""Encoders, freezing, weights and GloVe loading, and a small end-to-end overfit (MANME.md §1, encoders; §5)."""
import itertools
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.nn.utils.rnn import pack_padded_sequence

from config import resolve
from data.augment import crop_flip_normalize
from engine.trainer import compile_step
from losses import RetrievalLoss
from models import GRAINS, build_model
from models.glove import glove_cache_path, load_glove
from models.image_encoder import WEIGHT_FILES, ImageEncoder

GRAIN_SUBSETS = [",".join(c) for n in (1, 2, 3) for c in itertools.combinations(GRAINS, n)]


def config(**kw):
    flags = dict(backbone="resnet18", backbone_weights="none", embed_dim=32, word_dim=8)
    return resolve({**flags, **kw})


pytestmark = pytest.mark.usefixtures("single_thread")


# --- image encoder ------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_image_shapes_at_64_and_224(backbone):
    encoder = ImageEncoder(backbone, "none", list(GRAINS), embed_dim=24).eval()
    with torch.no_grad():
        maps = encoder.feature_maps(torch.randn(1, 3, 224, 224))
        expected = {"coarse": (7, 7), "mid": (14, 14), "fine": (28, 28)}
        assert {g: tuple(x.shape[-2:]) for g, x in maps.items()} == expected
        for size in (64, 224):
            out = encoder(torch.randn(2, 3, size, size))
            assert list(out) == list(GRAINS)
            for x in out.values():
                assert x.shape == (2, 24) and x.dtype == torch.float32
                assert torch.allclose(x.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("grains", GRAIN_SUBSETS)
def test_every_grain_subset_builds_only_what_it_needs(grains):
    model = build_model(config(grains=grains), vocab_size=10).eval()
    wanted = grains.split(",")
    with torch.no_grad():
        out = model.encode_images(torch.randn(2, 3, 64, 64))
    assert list(out) == wanted and all(x.shape == (2, 32) for x in out.values())
    encoder = model.image_encoder
    assert set(encoder.projections) == set(wanted)
    assert hasattr(encoder, "lat4") == (wanted != ["coarse"])       # coarse alone: no top-down path
    assert hasattr(encoder, "lat3") == ("fine" in wanted)
    assert set(model.blocks.block_names) == set(wanted)


def test_text_encoder_shapes_and_padding():
    model = build_model(config(), vocab_size=30).eval()
    tokens = torch.tensor([[1, 5, 7, 2, 0, 0], [1, 9, 2, 0, 0, 0], [1, 4, 4, 6, 8, 2]])
    lengths = torch.tensor([4, 3, 6])
    with torch.no_grad():
        text = model.encode_texts(tokens, lengths)
        alone = model.encode_texts(tokens[1:2, :3], lengths[1:2])
        padded_more = model.encode_texts(torch.cat([tokens, torch.zeros(3, 4, dtype=torch.long)], 1), lengths)
    assert text.shape == (3, 32)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(text[1], alone[0], atol=1e-6)            # unsorted batch, padding ignored
    assert torch.allclose(text, padded_more, atol=1e-6)


def reference_text_encoding(encoder, tokens, lengths):
    """The encoder's forward as torch's packing does it (enforce_sorted=False): the figures to keep."""
    packed = pack_padded_sequence(encoder.embedding(tokens), lengths.clamp(min=1), batch_first=True,
                                  enforce_sorted=False)
    _, hidden = encoder.gru(packed)
    return F.normalize(torch.cat([hidden[0], hidden[1]], dim=-1).float(), dim=-1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh runs it)"))])
def test_text_encoder_sorts_as_torch_packing_does(device):
    """The encoder sorts the batch itself (torch's packing would wait for the GPU at every step):
    the same embeddings and gradients, bit for bit, ties in length and empty captions included."""
    torch.manual_seed(0)
    encoder = build_model(config(), vocab_size=50).text_encoder.to(device).requires_grad_(True)
    lengths = torch.tensor([5, 0, 9, 5, 1, 9, 3, 5])
    tokens = torch.randint(1, 50, (8, 9))
    tokens[torch.arange(9) >= lengths[:, None]] = 0
    outputs = []
    for encode in (encoder, lambda t, n: reference_text_encoding(encoder, t, n)):
        encoder.zero_grad()
        text = encode(tokens.to(device), lengths)
        (text * torch.arange(32, device=device)).sum().backward()
        outputs.append((text.detach(), [p.grad.clone() for p in encoder.parameters()]))
    (ours, our_grads), (theirs, their_grads) = outputs
    assert torch.equal(ours, theirs)
    assert all(torch.equal(a, b) for a, b in zip(our_grads, their_grads))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh runs it)")
@pytest.mark.parametrize("compiled", [False, True])
def test_training_step_on_the_gpu_never_waits_for_it(compiled):
    """No step of train.py's (batch to the device, crop and normalise, forward, loss, backward, AdamW)
    synchronises with the GPU: the CPU queues the next work while the card runs the backbone. Eagerly and
    as --compile's step (engine.trainer.compile_step: CUDA graphs)."""
    cfg = config(crop_size=32, batch_size=4)
    model = build_model(cfg, vocab_size=30).cuda().train()
    loss_fn = RetrievalLoss(cfg).cuda()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixels = torch.randint(0, 256, (8, 40, 40, 3), dtype=torch.uint8).pin_memory()
    crops = torch.tensor([[1, 2, 0], [0, 8, 1]] * 4)
    tokens, lengths = torch.randint(1, 30, (4, 6)).pin_memory(), torch.tensor([6, 3, 6, 1])

    def loss_step(reference, target, tokens, lengths):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return loss_fn(model, model(reference, target, tokens, lengths))
    step = compile_step(loss_step, torch.device("cuda")) if compiled else loss_step
    # the first steps warm up cuDNN and the allocator (and compile, then record the CUDA graphs)
    for sync_mode in ("default",) * (3 if compiled else 1) + ("error",):
        torch.cuda.set_sync_debug_mode(sync_mode)
        try:
            images = crop_flip_normalize(pixels.cuda(non_blocking=True), crops, 32)
            if compiled:
                torch.compiler.cudagraph_mark_step_begin()
            loss = step(images[:4], images[4:], tokens.cuda(non_blocking=True), lengths)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(loss.total)


def test_artemis_forces_coarse(caplog):
    cfg = resolve(dict(model="artemis", backbone="resnet18", backbone_weights="none", embed_dim=32,
                       word_dim=8, grains="coarse,mid"))
    with caplog.at_level(logging.WARNING, logger="manme"):
        model = build_model(cfg, vocab_size=10)
    assert model.grains == ["coarse"] and "coarse granularity only" in caplog.text


# --- freezing -----------------------------------------------------------------------------------

def bn_stats(model):
    return [b.running_mean.clone() for b in model.image_encoder.backbone.modules()
            if isinstance(b, torch.nn.BatchNorm2d)]


def training_step(model, cfg):
    images, tokens, lengths = torch.randn(8, 3, 32, 32), torch.randint(1, 10, (4, 5)), torch.tensor([5, 3, 4, 2])
    loss = RetrievalLoss(cfg)(model, model(images[:4], images[4:], tokens, lengths)).total
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_frozen_backbone_and_words_do_not_move():
    cfg = config()
    model = build_model(cfg, vocab_size=10)
    model.train()
    assert not model.image_encoder.backbone.training and model.image_encoder.training
    assert not any(p.requires_grad for p in model.backbone_parameters())
    assert not any(p.requires_grad for p in model.word_embedding_parameters())
    weights = [p.clone() for p in model.backbone_parameters()]
    words = model.text_encoder.embedding.weight.clone()
    stats = bn_stats(model)
    projection = model.image_encoder.projections["coarse"].weight.clone()
    training_step(model, cfg)
    assert all(torch.equal(a, b) for a, b in zip(stats, bn_stats(model)))          # BN statistics unchanged
    assert all(torch.equal(a, b) for a, b in zip(weights, model.backbone_parameters()))
    assert torch.equal(words, model.text_encoder.embedding.weight)
    assert not torch.equal(projection, model.image_encoder.projections["coarse"].weight)
    trainable, total = model.parameter_counts()
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) and 0 < trainable < total


def test_finetune_unfreezes():
    cfg = config(img_finetune=True, txt_finetune=True)
    model = build_model(cfg, vocab_size=10).train()
    assert model.image_encoder.backbone.training
    assert all(p.requires_grad for p in model.parameters())
    stats = bn_stats(model)
    training_step(model, cfg)
    assert not all(torch.equal(a, b) for a, b in zip(stats, bn_stats(model)))
    model.set_finetune(img=False, txt=False)
    assert not model.image_encoder.backbone.training
    model.eval().train()
    assert not model.image_encoder.backbone.training
    assert model.parameter_counts()[0] < model.parameter_counts()[1]


def test_visual_search_never_trains_the_text_encoder():
    model = build_model(config(model="visual-search", txt_finetune=True), vocab_size=10)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())


# --- backbone weights ---------------------------------------------------------------------------

def test_missing_default_weights_name_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHT_FILES["resnet50"]
    with pytest.raises(FileNotFoundError) as error:
        build_model(config(backbone="resnet50", backbone_weights="default"), vocab_size=10)
    assert str(expected) in str(error.value) and "--backbone_weights none" in str(error.value)
    with pytest.raises(FileNotFoundError) as error:
        build_model(config(backbone_weights=str(tmp_path / "nope.pth")), vocab_size=10)
    assert str(tmp_path / "nope.pth") in str(error.value) and "--backbone_weights none" in str(error.value)


def test_weights_load_from_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(5)
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "hub" / "checkpoints" / WEIGHT_FILES["resnet18"]
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    for weights in ("default", str(path)):
        model = build_model(config(backbone_weights=weights), vocab_size=10)
        assert torch.equal(model.image_encoder.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
        assert torch.equal(model.image_encoder.backbone.stem[1].running_var, source.bn1.running_var)


# --- GloVe --------------------------------------------------------------------------------------

def write_glove(path, rows):
    path.write_text("".join(f"{w} " + " ".join(f"{v:.4f}" for v in vec) + "\n" for w, vec in rows))


def test_glove_reads_caches_and_invalidates(tmp_path, caplog, monkeypatch):
    glove = tmp_path / "glove.tiny.4d.txt"
    write_glove(glove, [("red", [1, 2, 3, 4]), (". . .", [9, 9, 9, 9]), ("dress", [0.5, 0, 0, -1]),
                        ("red", [7, 7, 7, 7])])
    words = ["<pad>", "<start>", "red", "dress", "longer"]
    cache = glove_cache_path(tmp_path / "vocab" / "shoes_vocab.json", glove)
    assert cache == tmp_path / "vocab" / "shoes_vocab.glove.tiny.4d.pt"
    with caplog.at_level(logging.INFO, logger="manme"):
        vectors, found = load_glove(glove, words, cache)
    assert "2 of 5 words found" in caplog.text
    assert found.tolist() == [False, False, True, True, False]
    assert vectors[2].tolist() == [1, 2, 3, 4] and vectors[3].tolist() == [0.5, 0, 0, -1]
    assert cache.is_file() and torch.load(cache, weights_only=True)["words"] == words

    import models.glove
    def no_read(*a):
        raise AssertionError("text file read although the cache is fresh")
    monkeypatch.setattr(models.glove, "_read_text", no_read)
    cached_vectors, cached_found = load_glove(glove, words, cache)
    assert torch.equal(cached_vectors, vectors) and torch.equal(cached_found, found)
    monkeypatch.undo()

    write_glove(glove, [("red", [1, 2, 3, 4]), ("longer", [2, 2, 2, 2])])   # the GloVe file changed
    vectors, found = load_glove(glove, words, cache)
    assert found.tolist() == [False, False, True, False, True]
    vectors, found = load_glove(glove, words[:4], cache)                    # the vocabulary changed
    assert found.tolist() == [False, False, True, False]


def test_model_word_embeddings_from_glove(tmp_path, caplog):
    glove = tmp_path / "glove.tiny.8d.txt"
    write_glove(glove, [("red", [float(i) for i in range(8)]), ("blue", [1.0] * 8)])
    words = ["<pad>", "<start>", "<end>", "red", "blue", "green"]
    vocab_path = tmp_path / "vocab" / "fashioniq_vocab.json"
    with caplog.at_level(logging.INFO, logger="manme"):
        model = build_model(config(glove_path=str(glove)), len(words), vocab_path=vocab_path, vocab_words=words)
    weight = model.text_encoder.embedding.weight
    assert weight[3].tolist() == [float(i) for i in range(8)] and weight[4].tolist() == [1.0] * 8
    assert weight[0].abs().sum() == 0
    assert "2 of 6 words found" in caplog.text
    assert glove_cache_path(vocab_path, glove).is_file()
    with pytest.raises(ValueError, match="--word_dim 8"):
        build_model(config(glove_path=str(glove), word_dim=300), len(words), vocab_path=vocab_path, vocab_words=words)
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        build_model(config(glove_path=str(tmp_path / "nothere.txt")), len(words), vocab_path=vocab_path,
                    vocab_words=words)


# --- end to end ---------------------------------------------------------------------------------

def recall_at_1(model, reference, target, tokens, lengths):
    model.eval()
    with torch.no_grad():
        inputs = model(reference, target, tokens, lengths)
        query = model.compose(inputs.reference(model.grains), inputs.text)
        hits = model.grain_scores(query, inputs.targets).sum(0).argmax(dim=1) == torch.arange(len(reference))
    model.train()
    return hits.float().mean().item()


def test_overfits_16_triplets():
    """manme from scratch (random resnet18, 32 px): loss below half its start and R@1 = 100 % within 100 steps."""
    torch.manual_seed(0)
    cfg = resolve(dict(model="manme", backbone="resnet18", backbone_weights="none", embed_dim=128, word_dim=32,
                       crop_size=32))
    model, loss_fn = build_model(cfg, vocab_size=40), RetrievalLoss(cfg)
    n, size = 16, cfg.crop_size
    colours = torch.rand(2, n, 3, 1, 1)
    reference = (colours[0] + 0.3 * torch.rand(n, 3, size, size)).clamp(0, 1)   # coloured, noisy images
    target = (colours[1] + 0.3 * torch.rand(n, 3, size, size)).clamp(0, 1)
    lengths = torch.randint(3, 9, (n,))
    tokens = torch.zeros(n, 8, dtype=torch.long)
    for i, length in enumerate(lengths):
        tokens[i, :length] = torch.randint(1, 40, (int(length),))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    first, done = None, False
    for step in range(1, 101):
        loss = loss_fn(model, model(reference, target, tokens, lengths)).total
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 and loss.item() < first / 2 and recall_at_1(model, reference, target, tokens, lengths) == 1.0:
            done = True
            break
    assert done, f"after {step} steps: loss {loss.item():.3f} (start {first:.3f})"


def test_glove_words_come_from_the_vocabulary(tmp_path, caplog):
    from data.text import SPECIALS, Vocabulary
    glove = tmp_path / "glove.tiny.8d.txt"
    write_glove(glove, [("red", [2.0] * 8)])
    vocab = Vocabulary(list(SPECIALS) + ["blue", "red"], words_count=2)
    vocab_path = tmp_path / "vocab" / "shoes_vocab.json"
    vocab.save(vocab_path)
    with caplog.at_level(logging.INFO, logger="manme"):
        model = build_model(config(glove_path=str(glove), dataset="shoes"), len(vocab), vocab_path=vocab_path,
                            vocab_words=vocab.tokens)
    assert model.text_encoder.embedding.weight[vocab.index["red"]].tolist() == [2.0] * 8
    assert f"1 of {len(vocab)} words found" in caplog.text
    assert glove_cache_path(vocab_path, glove).is_file()
