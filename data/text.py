"""Caption cleaning, tokenisation and the vocabulary (MANME.md §1, encoders).

The cleaning is the ARTEMIS one: '/', '-' and '\\' become spaces, every character
other than an ASCII letter, a parenthesis or a space is dropped, the text is
lower-cased and split by `nltk.word_tokenize(text, preserve_line=True)` (which
needs no downloaded tokenizer data). On the public annotation files this gives
3775 FashionIQ words and 1330 Shoes words.
"""
from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from nltk.tokenize import word_tokenize

from utils.errors import UserError
from utils.io import atomic_write_json, read_json

PAD, START, AND, END, UNK = "<pad>", "<start>", "<and>", "<end>", "<unk>"
SPECIALS = (PAD, START, AND, END, UNK)
CAPTION_JOIN = " <and> "  # how FashionIQ's two captions are joined in Triplet.text / Query.text

_SEPARATORS = str.maketrans({"/": " ", "-": " ", "\\": " "})
_DROPPED = re.compile(r"[^A-Za-z() ]")
_CHUNKS = re.compile(r"[a-z]+|[()]")


def clean_caption(text: str) -> str:
    return _DROPPED.sub("", text.translate(_SEPARATORS)).lower()


@lru_cache(maxsize=1 << 16)
def _tokenize_chunk(chunk: str) -> tuple[str, ...]:
    return tuple(word_tokenize(chunk, preserve_line=True))


def tokenize(text: str) -> list[str]:
    """nltk.word_tokenize(clean_caption(text), preserve_line=True), computed one letter run at a time.

    On cleaned text (letters, parentheses, spaces) nltk's rules never reach across
    a letter run (they split parentheses off and a few whole words like 'cannot'),
    so tokenising runs separately, with a cache, gives the same tokens about ten times faster.
    """
    return [t for chunk in _CHUNKS.findall(clean_caption(text)) for t in _tokenize_chunk(chunk)]


class Vocabulary:
    """Token <-> id map: the special tokens first (`<pad>` = 0), then the corpus words.

    `words_count` is the number of distinct corpus words, counted before the
    special tokens are added (what vocab.py prints).
    """

    def __init__(self, tokens: list[str], words_count: int, dataset: str = ""):
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise UserError("vocabulary tokens must be a list of strings")
        if isinstance(words_count, bool) or not isinstance(words_count, int) or words_count < 0:
            raise UserError(f"vocabulary words_count must be a whole number >= 0, got {words_count!r}")
        if list(tokens[:len(SPECIALS)]) != list(SPECIALS):
            raise UserError(f"vocabulary must start with {SPECIALS}, got {tokens[:len(SPECIALS)]}")
        if len(set(tokens)) != len(tokens):
            raise UserError("vocabulary has duplicate tokens")
        self.tokens = list(tokens)
        self.words_count = words_count
        self.dataset = dataset  # the dataset whose training captions built it ("" when unknown)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.start_id, self.and_id, self.end_id, self.unk_id = (self.index[t] for t in SPECIALS)

    @classmethod
    def build(cls, captions: Iterable[str], extra_specials: Iterable[str] = (), dataset: str = "") -> Vocabulary:
        """Every word of the captions is kept (no frequency threshold); most frequent first."""
        counts = Counter(w for caption in captions for w in tokenize(caption))
        words = sorted(counts, key=lambda w: (-counts[w], w))
        specials = list(SPECIALS) + [s for s in extra_specials if s not in SPECIALS]
        return cls(specials + [w for w in words if w not in specials], words_count=len(words), dataset=dataset)

    def unknown_share(self, texts: Iterable[str]) -> float:
        """The share of the texts' words outside the vocabulary (read as <unk>)."""
        words = [w for text in texts for part in text.split(AND) for w in tokenize(part)]
        return sum(w not in self.index for w in words) / max(1, len(words))

    def __len__(self) -> int:
        return len(self.tokens)

    def _ids(self, words: list[str]) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in words]

    def encode(self, text: str) -> list[int]:
        """<start> words [<and> words] <end>; FashionIQ's literal ' <and> ' becomes the <and> token."""
        ids = [self.start_id]
        for i, part in enumerate(text.split(AND)):
            if i:
                ids.append(self.and_id)
            ids += self._ids(tokenize(part))
        return ids + [self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.tokens[i] for i in ids if i != self.pad_id)

    def unknown_words(self, text: str) -> list[str]:
        return [w for part in text.split(AND) for w in tokenize(part) if w not in self.index]

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, {"dataset": self.dataset, "words_count": self.words_count, "tokens": self.tokens})

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        data = read_json(path)
        try:
            if not isinstance(data, dict):
                raise UserError(f"expected a JSON object, got {type(data).__name__}")
            if "tokens" not in data or "words_count" not in data:
                raise UserError("no 'tokens' and 'words_count' keys")
            dataset = data.get("dataset", "")
            if not isinstance(dataset, str):
                raise UserError(f"'dataset' must be a string, got {dataset!r}")
            return cls(data["tokens"], data["words_count"], dataset)
        except UserError as e:
            raise UserError(f"{path}: not a vocabulary file ({e}); rebuild it with vocab.py") from None


class ClipTokens(Vocabulary):
    """--text_encoder clip: open_clip's bundled BPE tokenizer (read from the installed wheel, nothing downloaded)
    behind the Vocabulary interface. No vocabulary file: `tokens` holds only the special tokens, `kind` says
    which tokenizer a checkpoint's texts need. FashionIQ's two captions are joined with "and", as CLIP4Cir does."""

    kind = "clip-bpe"

    def __init__(self, dataset: str = ""):
        super().__init__(list(SPECIALS), 0, dataset)
        self.tokenizer = clip_tokenizer()
        self.size = len(self.tokenizer.encoder)

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str) -> list[int]:
        """Start token, BPE ids, end-of-text token, truncated to CLIP's 77 positions (the end token kept);
        0-padding is added per batch (pad_tokens), and by the text tower up to 77."""
        ids = self.tokenizer([" and ".join(part.strip() for part in text.split(AND))])[0]
        return ids[:int(ids.argmax()) + 1].tolist()  # up to the end-of-text token, the largest id

    def unknown_share(self, texts: Iterable[str]) -> float:
        return 0.0  # byte-level BPE: every text has a spelling

    def unknown_words(self, text: str) -> list[str]:
        return []

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i])


@lru_cache(maxsize=1)
def clip_tokenizer():
    """open_clip's SimpleTokenizer, imported when --text_encoder clip needs it (an optional extra)."""
    try:
        return importlib.import_module("open_clip.tokenizer").SimpleTokenizer()
    except ImportError:  # pragma: no cover - the core install
        raise UserError("--text_encoder clip needs open_clip: `pip install -r requirements-clip.txt`") from None


def vocabulary_path(cfg) -> Path:
    return Path(cfg.vocab_dir) / f"{cfg.dataset}_vocab.json"


def load_vocabulary(cfg) -> Vocabulary:
    """The vocabulary of cfg.dataset from --vocab_dir; one built for another dataset, or holding no word, is refused.
    With --text_encoder clip, open_clip's tokenizer (no file)."""
    if getattr(cfg, "text_encoder", "gru") == "clip":
        return ClipTokens(cfg.dataset)
    path = vocabulary_path(cfg)
    rebuild = (f"`python vocab.py --dataset {cfg.dataset} --data_root {cfg.data_root} --vocab_dir {cfg.vocab_dir}`")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no vocabulary; build it first with {rebuild}")
    vocab = Vocabulary.load(path)
    if vocab.dataset and vocab.dataset != cfg.dataset:
        raise UserError(f"{path} was built from the {vocab.dataset} captions, not {cfg.dataset}'s; "
                        f"rebuild it with {rebuild}")
    if len(vocab) <= len(SPECIALS):
        raise UserError(f"{path} holds only the special tokens, no word; rebuild it with {rebuild}")
    return vocab
