"""Text encoder (MANME.md §1, encoders): word embeddings -> BiGRU over the packed sequence -> final states -> L2."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import invert_permutation, pack_padded_sequence

from .glove import load_glove

log = logging.getLogger("manme")
_said_random = False


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, word_dim: int, embed_dim: int, glove_path: str = "",
                 vocab_words: list[str] | None = None, glove_cache: str | None = None):
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"--embed_dim {embed_dim}: must be even (two GRU directions of embed_dim/2)")
        self.embedding = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, embed_dim // 2, batch_first=True, bidirectional=True)
        if glove_path:
            self.load_glove(glove_path, vocab_words, glove_cache)
        else:
            global _said_random
            if not _said_random:
                log.info("word embeddings: random init (no --glove_path)")
                _said_random = True

    def pretrained_parameters(self):
        """What stage 1 freezes and --txt_finetune trains: the word embeddings."""
        return self.embedding.parameters()

    @torch.no_grad()
    def load_glove(self, glove_path: str, vocab_words: list[str] | None, cache_path: str | None = None) -> None:
        if vocab_words is None or len(vocab_words) != self.embedding.num_embeddings:
            raise ValueError(f"--glove_path needs the vocabulary's {self.embedding.num_embeddings} words, "
                             f"got {None if vocab_words is None else len(vocab_words)}")
        vectors, found = load_glove(glove_path, vocab_words, cache_path)
        if vectors.shape[1] != self.embedding.embedding_dim:
            raise ValueError(f"{glove_path}: {vectors.shape[1]}-d vectors but --word_dim is "
                             f"{self.embedding.embedding_dim}; pass --word_dim {vectors.shape[1]}")
        weight = self.embedding.weight
        if found.any():  # unknown words: random at GloVe's scale
            weight.normal_(0.0, float(vectors[found].std()))
        weight[found] = vectors[found].to(weight.dtype)
        weight[0].zero_()

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens (B, L) padded with 0, lengths (B,) -> (B, d) L2-normalised."""
        # pack_padded_sequence(enforce_sorted=False) does this sort, but copies the order to the GPU
        # with a blocking copy, which waits for all the queued work (the backbone's) at every step.
        # The same sort and the same row gathers, with the order sent from pinned memory instead.
        lengths, order = torch.sort(lengths.cpu().to(torch.int64).clamp(min=1), descending=True)
        if tokens.device.type == "cuda":
            order = order.pin_memory()
        order = order.to(tokens.device, non_blocking=True)
        words = self.embedding(tokens).index_select(0, order)
        _, hidden = self.gru(pack_padded_sequence(words, lengths, batch_first=True))  # (2, B, d/2), sorted
        hidden = hidden.index_select(1, invert_permutation(order))                    # the input order
        return F.normalize(torch.cat([hidden[0], hidden[1]], dim=-1).float(), dim=-1)
