"""CLIP's byte-level BPE tokenizer, giving exactly the ids of open_clip's `SimpleTokenizer` (OpenAI CLIP).

Pipeline, as OpenAI's: clean (ftfy.fix_text, html.unescape twice, strip, collapse whitespace), lowercase,
split with CLIP's regex, map each word's UTF-8 bytes to printable characters, BPE each word with `</w>` marking
its end, then wrap in start/end tokens, truncate keeping the end token last, and zero-pad.

The BPE merge loop runs in the Rust `tokenizers` library (`tokenizers.models.BPE`, word by word, no
pre-tokenizer or normaliser of its own), which gives ids identical to OpenAI's Python loop and is about 4x
faster on unseen words. Words already seen come from a word cache, and identical texts in a batch are
tokenised once.

The vocabulary is looked up in this order: the `vocab_path` argument, the `ELIP_JAX_BPE_PATH` environment
variable, then OpenAI's `bpe_simple_vocab_16e6.txt.gz` shipped inside this package (MIT, see
elip_jax/assets/), so that an install of the runtime requirements alone tokenizes. Either OpenAI's gzipped
merges file or a Hugging Face tokenizer folder (vocab.json + merges.txt) is accepted.
"""
import functools
import gzip
import html
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import ftfy
import numpy as np
import regex
from tokenizers.models import BPE

VOCAB_SIZE = 49408
SOT_TOKEN_ID = 49406  # <start_of_text>
EOT_TOKEN_ID = 49407  # <end_of_text>
DEFAULT_CONTEXT_LENGTH = 77
BPE_PATH_ENV_VAR = "ELIP_JAX_BPE_PATH"
OPENAI_VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"

# 256 single-byte symbols, the same 256 with `</w>`, the merges, then the two special tokens.
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
_END_OF_WORD = "</w>"
# open_clip names the special tokens like this and, like OpenAI's tokenizer, turns their literal text in a
# caption into the special id (OpenAI spells them <|startoftext|>, <|endoftext|>). We follow open_clip.
_SPECIAL_TOKEN_TEXTS = {"<start_of_text>": SOT_TOKEN_ID, "<end_of_text>": EOT_TOKEN_ID}
_HF_SPECIAL_TOKEN_TEXTS = {"<|startoftext|>": SOT_TOKEN_ID, "<|endoftext|>": EOT_TOKEN_ID}
_WORD_PATTERN = regex.compile(
    "|".join(_SPECIAL_TOKEN_TEXTS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# Bounds memory in long pre-training runs (web captions bring new words forever); ~100 MB when full.
_WORD_CACHE_LIMIT = 500_000

TextBatch = Union[str, Sequence[str]]


class VocabularyNotFoundError(FileNotFoundError):
    """No CLIP BPE vocabulary could be located."""


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> Dict[int, str]:
    """OpenAI's reversible map from the 256 byte values to printable, non-whitespace characters.

    Printable Latin-1 bytes map to themselves; the rest (controls, space, ...) to code points from 256 up,
    so a byte-mapped word never contains whitespace and BPE can treat it as a plain string.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {byte: chr(byte) for byte in printable}
    unprintable = [byte for byte in range(256) if byte not in mapping]
    mapping.update({byte: chr(256 + rank) for rank, byte in enumerate(unprintable)})
    return mapping


# str.translate table: the Latin-1 reading of a UTF-8 byte string -> byte-mapped characters.
_BYTE_TRANSLATION = str.maketrans({chr(byte): char for byte, char in bytes_to_unicode().items()})
_BYTE_DECODER = {char: byte for byte, char in bytes_to_unicode().items()}


# ftfy.fix_text leaves text made only of these characters unchanged: printable ASCII without "&" (no HTML
# entity to unescape), tab and newline. Every fixer of ftfy needs a non-ASCII character, "&", "\r", ESC or
# another ASCII control character to act on. ftfy is ~70 % of the tokenising time, so typical prompts skip it;
# tests/test_tokenizer.py checks the equivalence against ftfy itself.
_FTFY_NO_OP = regex.compile(r"[\t\n\x20-\x25\x27-\x7e]*")


def clean_text(text: str) -> str:
    """OpenAI CLIP's text cleaning: fix mojibake, unescape HTML twice, collapse whitespace, lowercase."""
    if not _FTFY_NO_OP.fullmatch(text):
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def _byte_mapped_words(text: str) -> List[str]:
    """Cleaned, regex-split words of `text`, each spelt in byte-mapped characters (the BPE alphabet)."""
    text = clean_text(text)
    words = _WORD_PATTERN.findall(text)
    if text.isascii() and text.isprintable():
        return words  # the byte map is the identity on printable ASCII except space, never part of a word
    return [word.encode("utf-8").decode("latin-1").translate(_BYTE_TRANSLATION) for word in words]


# ---------------------------------------------------------------------------------------------------------
# Locating and loading the vocabulary.

def shipped_vocab_file() -> Optional[str]:
    """OpenAI's vocabulary inside this package; None only in a broken install that lost its data files."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", OPENAI_VOCAB_FILENAME)
    return path if os.path.isfile(path) else None


def resolve_vocab_path(vocab_path: Union[str, os.PathLike, None] = None) -> str:
    """Absolute path of the vocabulary to use: `vocab_path`, else $ELIP_JAX_BPE_PATH, else the shipped file."""
    if vocab_path is not None:
        source = "vocab_path"
    elif os.environ.get(BPE_PATH_ENV_VAR):
        vocab_path, source = os.environ[BPE_PATH_ENV_VAR], f"${BPE_PATH_ENV_VAR}"
    else:
        vocab_path, source = shipped_vocab_file(), "elip_jax's own files"
    if vocab_path is None:
        raise VocabularyNotFoundError(
            "No CLIP BPE vocabulary found. Provide one in any of these ways: "
            f"(1) pass vocab_path= (OpenAI's {OPENAI_VOCAB_FILENAME} or a Hugging Face tokenizer folder "
            f"holding vocab.json and merges.txt); (2) set the environment variable {BPE_PATH_ENV_VAR} to "
            f"such a path; (3) reinstall elip_jax, whose package data holds assets/{OPENAI_VOCAB_FILENAME} "
            "(this installation has lost it).")
    path = os.path.abspath(os.fspath(vocab_path))
    if not os.path.exists(path):
        raise VocabularyNotFoundError(f"CLIP vocabulary path from {source} does not exist: {path}")
    return path


def _read_openai_merges(path: str) -> List[str]:
    with open(path, "rb") as file:
        data = file.read()
    if data[:2] == b"\x1f\x8b":  # gzip magic; a plain-text merges file is accepted too
        data = gzip.decompress(data)
    # The first line is a version header; only the first _NUM_MERGES merges are used (as OpenAI).
    return data.decode("utf-8").split("\n")[1:1 + _NUM_MERGES]


def _load_openai_vocab(path: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    """(id -> token list, merges) from OpenAI's bpe_simple_vocab_16e6.txt(.gz); ids follow OpenAI's order."""
    merges = [tuple(line.split()) for line in _read_openai_merges(path)]
    merges = [merge for merge in merges if merge]  # tolerate a trailing newline in a short file
    malformed = next((merge for merge in merges if len(merge) != 2), None)
    if malformed is not None:
        raise ValueError(f"{path} is not a CLIP BPE merges file: malformed merge line {' '.join(malformed)!r}")
    if len(merges) != _NUM_MERGES:
        raise ValueError(f"{path} is not a CLIP BPE merges file: expected {_NUM_MERGES} merges after the "
                         f"header line, found {len(merges)}")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + _END_OF_WORD for symbol in symbols] + ["".join(merge) for merge in merges]
    tokens += list(_SPECIAL_TOKEN_TEXTS)
    return tokens, merges


def _load_hf_vocab(folder: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    """(id -> token list, merges) from a Hugging Face CLIP tokenizer folder (vocab.json + merges.txt)."""
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    missing = [name for name, file in (("vocab.json", vocab_file), ("merges.txt", merges_file))
               if not os.path.isfile(file)]
    if missing:
        raise VocabularyNotFoundError(
            f"{folder} is a folder but not a Hugging Face CLIP tokenizer folder: missing {', '.join(missing)}")
    with open(vocab_file, encoding="utf-8") as file:
        token_to_id = json.load(file)
    if sorted(token_to_id.values()) != list(range(VOCAB_SIZE)):
        raise ValueError(f"{vocab_file} must map {VOCAB_SIZE} tokens to the ids 0..{VOCAB_SIZE - 1}; "
                         f"found {len(token_to_id)} entries (a CLIP vocabulary has {VOCAB_SIZE})")
    tokens = [""] * VOCAB_SIZE
    for token, token_id in token_to_id.items():
        tokens[token_id] = token
    with open(merges_file, encoding="utf-8") as file:
        lines = file.read().split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()][:_NUM_MERGES]
    if len(merges) != _NUM_MERGES or any(len(merge) != 2 for merge in merges):
        raise ValueError(f"{merges_file} must hold {_NUM_MERGES} merges of two symbols; found {len(merges)}")
    return tokens, merges


def _validate_vocab(tokens: List[str], merges: List[Tuple[str, str]], path: str) -> None:
    """Refuse anything but a full CLIP vocabulary (a degenerate one would tokenise silently wrong)."""
    if len(set(tokens)) != VOCAB_SIZE:
        raise ValueError(f"CLIP vocabulary from {path} must have {VOCAB_SIZE} distinct tokens, found "
                         f"{len(set(tokens))}")
    specials = {**_SPECIAL_TOKEN_TEXTS, **_HF_SPECIAL_TOKEN_TEXTS}
    for token_id in (SOT_TOKEN_ID, EOT_TOKEN_ID):
        if specials.get(tokens[token_id]) != token_id:
            raise ValueError(f"CLIP vocabulary from {path}: id {token_id} should be a start/end-of-text token, "
                             f"found {tokens[token_id]!r}")
    known = set(tokens)
    symbols = list(bytes_to_unicode().values())
    absent = [token for token in symbols + [s + _END_OF_WORD for s in symbols] + ["".join(m) for m in merges]
              if token not in known]
    if absent:
        raise ValueError(f"CLIP vocabulary from {path} lacks {len(absent)} byte symbols or merge results, "
                         f"e.g. {absent[:3]}")


# ---------------------------------------------------------------------------------------------------------
# The tokenizer.

class CLIPTokenizer:
    """CLIP BPE tokenizer; ids identical to open_clip's `SimpleTokenizer` / OpenAI `clip.tokenize`.

    `tokenizer(texts, context_length=77)` -> int32 array [N, context_length]; `encode(text)` -> ids without
    start/end tokens; `decode(ids)` -> text. Prefer `get_tokenizer()` / `tokenize()`, which share one
    instance (and its word cache) per vocabulary file.
    """

    sot_token_id = SOT_TOKEN_ID
    eot_token_id = EOT_TOKEN_ID
    vocab_size = VOCAB_SIZE

    def __init__(self, vocab_path: Union[str, os.PathLike, None] = None):
        self.vocab_path = resolve_vocab_path(vocab_path)
        if os.path.isdir(self.vocab_path):
            tokens, merges = _load_hf_vocab(self.vocab_path)
        else:
            tokens, merges = _load_openai_vocab(self.vocab_path)
        _validate_vocab(tokens, merges, self.vocab_path)
        self._id_to_token = tokens
        token_to_id = {token: token_id for token_id, token in enumerate(tokens)}
        self._bpe = BPE(vocab=token_to_id, merges=merges, end_of_word_suffix=_END_OF_WORD)
        self._word_cache = self._new_word_cache()

    @staticmethod
    def _new_word_cache() -> Dict[str, List[int]]:
        # The special-token texts are ASCII, so byte mapping leaves them unchanged.
        return {text: [token_id] for text, token_id in _SPECIAL_TOKEN_TEXTS.items()}

    def _encode_texts(self, texts: Iterable[str]) -> List[List[int]]:
        """BPE ids (no start/end tokens) of each text; unseen words go through the Rust BPE once each."""
        words_per_text = [_byte_mapped_words(text) for text in texts]
        cache = self._word_cache  # a local reference: a full cache is replaced, never cleared under a reader
        unseen = {word for words in words_per_text for word in words if word not in cache}
        if len(cache) + len(unseen) > _WORD_CACHE_LIMIT:
            cache = self._word_cache = self._new_word_cache()
            unseen = {word for words in words_per_text for word in words if word not in cache}
        for word in unseen:
            cache[word] = [token.id for token in self._bpe.tokenize(word)]
        return [[token_id for word in words for token_id in cache[word]] for words in words_per_text]

    def encode(self, text: str) -> List[int]:
        """Token ids of one text, without the start/end tokens and without truncation."""
        if not isinstance(text, str):
            raise ValueError(f"encode() expects a str, got {type(text).__name__}")
        return self._encode_texts([text])[0]

    def __call__(self, texts: TextBatch, context_length: int = DEFAULT_CONTEXT_LENGTH) -> np.ndarray:
        """Token ids [N, context_length] int32: start token, BPE ids, end token, zero padding.

        A text longer than the context is truncated and its last id replaced by the end token (open_clip's
        `truncate=True`), so the end token, where CLIP pools the text, is always present.
        """
        texts = _as_text_list(texts)
        _check_context_length(context_length)
        unique_texts = list(dict.fromkeys(texts))  # tokenise repeated prompts once
        row_of_text = {text: row for row, text in enumerate(unique_texts)}
        unique_ids = np.zeros((len(unique_texts), context_length), dtype=np.int32)
        for row, ids in enumerate(self._encode_texts(unique_texts)):
            ids = [SOT_TOKEN_ID] + ids[:context_length - 2] + [EOT_TOKEN_ID]
            unique_ids[row, :len(ids)] = ids
        return unique_ids[[row_of_text[text] for text in texts]]

    def decode(self, ids: Union[Sequence[int], np.ndarray]) -> str:
        """Text of a sequence of ids; start tokens are dropped and decoding stops at the first end token,
        so a row of `tokenize()` output (with its padding) decodes to the cleaned, lowercased text."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"decode() expects a 1-D sequence of integer ids, got shape {ids.shape} "
                             f"dtype {ids.dtype}")
        pieces = []
        for token_id in ids.tolist():
            if token_id == EOT_TOKEN_ID:
                break
            if not 0 <= token_id < VOCAB_SIZE:
                raise ValueError(f"decode(): id {token_id} is outside the vocabulary [0, {VOCAB_SIZE})")
            if token_id != SOT_TOKEN_ID:
                pieces.append(self._id_to_token[token_id])
        data = bytes(_BYTE_DECODER[char] for char in "".join(pieces))
        return data.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ").strip()

    def __repr__(self) -> str:
        return f"CLIPTokenizer(vocab_path={self.vocab_path!r})"


def _as_text_list(texts: TextBatch) -> List[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise ValueError("texts must be a str or a sequence of str; got bytes (decode them to str first)")
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"texts must be a str or a sequence of str; got {type(texts).__name__}") from None
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{index}] must be a str, got {type(text).__name__}: {text!r:.60}")
    return texts


def _check_context_length(context_length: int) -> None:
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)) \
            or context_length < 2:
        raise ValueError("context_length must be an int >= 2 (room for the start and end tokens); "
                         f"got {context_length!r}")


@functools.lru_cache(maxsize=8)
def _tokenizer_for(resolved_path: str) -> CLIPTokenizer:
    return CLIPTokenizer(resolved_path)


def get_tokenizer(vocab_path: Union[str, os.PathLike, None] = None) -> CLIPTokenizer:
    """The shared tokenizer for a vocabulary (located as `resolve_vocab_path` says), loaded once per path."""
    return _tokenizer_for(resolve_vocab_path(vocab_path))


def tokenize(texts: TextBatch, context_length: int = DEFAULT_CONTEXT_LENGTH,
             vocab_path: Union[str, os.PathLike, None] = None) -> np.ndarray:
    """CLIP token ids, int32 [N, context_length], identical to `open_clip.tokenize(texts)`.

    A single str is a batch of one. See `CLIPTokenizer.__call__` for truncation and padding.
    """
    return get_tokenizer(vocab_path)(texts, context_length=context_length)
