"""CLIP's tokenizer without network access: `clip_tokenizer`, and the vocabulary files it falls back on.

Every OpenAI CLIP model uses the same 49,408-token byte-level BPE vocabulary. Its merges ship inside
the `open-clip-torch` wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`), so we can rebuild the exact
vocabulary (vocab.json + merges.txt) without network access and hand the two files to a `transformers`
`CLIPTokenizer` when a model folder brings no tokenizer files of its own.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path

import transformers
from transformers import CLIPTokenizer

from itkm_lightning.errors import DataFormatError, DataUnavailableError
from itkm_lightning.fileio import atomic_write_text

logger = logging.getLogger(__name__)

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
# CLIP keeps the first 49152 - 256 - 2 merges of the file: 256 byte tokens + 256 byte tokens with
# `</w>` + merges + 2 special tokens = 49408.
NUM_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2
START_OF_TEXT_ID = CLIP_VOCAB_SIZE - 2
END_OF_TEXT_ID = CLIP_VOCAB_SIZE - 1
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"


def open_clip_bpe_path() -> Path:
    """Path of the BPE merges file inside the installed open_clip package.

    Uses `find_spec` rather than `import open_clip`: importing the package pulls in all of its models
    (seconds of start-up) while we only need one data file next to it.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            "The CLIP BPE vocabulary ships with open-clip-torch, which is not installed; "
            "install it with `pip install open-clip-torch`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE_NAME
    if not path.is_file():
        raise DataUnavailableError(
            f"{path} is missing from the installed open_clip package; reinstall open-clip-torch."
        )
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP map from each byte to a printable unicode character, in CLIP's vocabulary order.

    Hand-written (a dozen lines) so that building the vocabulary does not import open_clip or
    transformers, which both define it; the order of the dict is the order of CLIP's first 256 tokens.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    shift = 0
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(256 + shift)
            shift += 1
    return dict(zip(byte_values, (chr(c) for c in code_points)))


def read_clip_merges(bpe_path: Path) -> list[tuple[str, str]]:
    """The merges CLIP uses: skip the version header line, keep the first NUM_MERGES."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(pair) != 2 for pair in merges):
        raise DataFormatError(f"{bpe_path} is not CLIP's BPE merges file; reinstall open-clip-torch.")
    return merges  # type: ignore[return-value]


def build_clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id exactly as CLIP orders it: bytes, bytes + `</w>`, merges, then the two specials."""
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [token + END_OF_WORD for token in byte_tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise DataFormatError(f"built {len(vocab)} tokens instead of {CLIP_VOCAB_SIZE}; the BPE file is not CLIP's.")
    return vocab


def default_cache_dir() -> Path:
    """Per-user cache folder for the generated files (`ITKM_CACHE_DIR` overrides it)."""
    root = os.environ.get("ITKM_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"itkm_lightning-{os.getuid()}")
    return Path(root) / "clip_tokenizer"


def write_clip_vocab_files(cache_dir: Path | None = None) -> Path:
    """Write vocab.json and merges.txt (HF format) once; return the folder that holds them.

    The folder name carries a hash of the BPE file so that a different open_clip data file never
    reuses a stale cache.
    """
    bpe_path = open_clip_bpe_path()
    digest = hashlib.sha256(bpe_path.read_bytes()).hexdigest()[:16]
    folder = (cache_dir or default_cache_dir()) / digest
    vocab_path, merges_path = folder / VOCAB_FILE, folder / MERGES_FILE
    if vocab_path.is_file() and merges_path.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    merges = read_clip_merges(bpe_path)
    atomic_write_text(vocab_path, json.dumps(build_clip_vocab(merges), ensure_ascii=False))
    merges_text = "#version: 0.2\n" + "\n".join(f"{left} {right}" for left, right in merges) + "\n"
    atomic_write_text(merges_path, merges_text)
    return folder


def clip_tokenizer(name_or_path: str | os.PathLike[str] | None = None, cache_dir: Path | None = None) -> CLIPTokenizer:
    """CLIP tokenizer that works offline (vocabulary of 49,408 tokens, pads with <|endoftext|>).

    Uses the tokenizer files of a local model directory when `name_or_path` has them, else builds the
    vocabulary from the BPE file shipped with open_clip (identical for every OpenAI CLIP).
    """
    if name_or_path is not None and _has_tokenizer_files(Path(name_or_path).expanduser()):
        try:
            tokenizer = _checked_tokenizer(Path(name_or_path).expanduser())
        except (OSError, ValueError) as error:  # unreadable or malformed files: the bundled vocabulary still works
            logger.warning("cannot read the tokenizer in %s (%s)", name_or_path, error)
            tokenizer = None
        if tokenizer is not None:
            return tokenizer
        logger.warning("tokenizer files in %s are not CLIP's 49,408-token vocabulary; using open_clip's", name_or_path)
    tokenizer = _checked_tokenizer(write_clip_vocab_files(cache_dir))
    if tokenizer is None:
        raise RuntimeError(
            f"transformers {transformers.__version__} built a CLIP tokenizer without the 49,408-token vocabulary "
            "from open_clip's BPE file; report this with your transformers version."
        )
    return tokenizer


def _has_tokenizer_files(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    has_bpe_files = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return has_bpe_files or (folder / "tokenizer.json").is_file()


def _checked_tokenizer(folder: Path) -> CLIPTokenizer | None:
    # transformers 5.x can return a tokenizer with only its special tokens instead of failing: check the size.
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    return tokenizer if len(tokenizer) == CLIP_VOCAB_SIZE else None
