"""Our byte-level BPE as a Hugging Face ``tokenizer.json`` (and back), so ``transformers`` gets identical ids.

Our tokenizer is rank-based (tiktoken's form): a chunk's bytes merge lowest-rank pair first. Hugging Face's BPE
is merge-list-based: the pair earliest in ``merges`` first. The two agree when merge ``k`` is the ``k``-th token
in rank order, so merges are recovered from the ranks: for each multi-byte token, in rank order, run BPE on its
bytes with only lower ranks allowed; it ends in exactly two parts, the merge that made it (the check tiktoken
applies to GPT-2's files). Bytes are spelled with GPT-2's printable byte alphabet, as ``ByteLevel`` expects.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from microgpt.common.atomic import atomic_write_text
from microgpt.common.errors import MicrogptError
from microgpt.tokenizer import Tokenizer
from microgpt.tokenizer.patterns import GPT2_PATTERN
from microgpt.tokenizer.tokenizer import ENDOFTEXT


@functools.cache
def byte_to_char() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (``bytes_to_unicode`` in its encoder.py).

    Printable Latin-1 bytes stand for themselves; the other 68 take the code points from 256 upwards, in order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _spell(token: bytes) -> str:
    table = byte_to_char()
    return "".join(table[b] for b in token)


def _unspell(text: str, where: str) -> bytes:
    inverse = {c: b for b, c in byte_to_char().items()}
    try:
        return bytes(inverse[c] for c in text)
    except KeyError:
        raise MicrogptError(f"{where}: token {text!r} is not byte-level BPE (not GPT-2's byte alphabet)") from None


def _merge_parts(token: bytes, ranks: Mapping[bytes, int], max_rank: int) -> list[bytes]:
    """BPE on ``token``'s bytes using only ranks below ``max_rank``."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list (in rank order) that reproduces ``ranks``.

    Raises:
        MicrogptError: When a token cannot be made by one merge of lower-ranked tokens.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _merge_parts(token, ranks, rank)
        if len(parts) != 2:
            raise MicrogptError(f"token {token!r} (id {rank}) is not one merge of lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def hf_tokenizer_json(tokenizer: Tokenizer) -> dict[str, Any]:
    """The ``tokenizer.json`` document (``tokenizers`` format 1.0) equal to ``tokenizer``."""
    vocab = {_spell(token): rank for token, rank in sorted(tokenizer.ranks.items(), key=lambda item: item[1])}
    merges = [[_spell(a), _spell(b)] for a, b in merges_from_ranks(tokenizer.ranks)]
    added = [
        {"id": token_id, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for text, token_id in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    ]  # fmt: skip
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },  # fmt: skip
    }


def write_hf_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (loaded by ``AutoTokenizer``, no custom code)."""
    atomic_write_text(out_dir / "tokenizer.json", json.dumps(hf_tokenizer_json(tokenizer), ensure_ascii=False))
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if ENDOFTEXT in tokenizer.special_tokens:
        config |= {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT}
    atomic_write_text(out_dir / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")


def tokenizer_from_hf_json(doc: Mapping[str, Any], where: str) -> Tokenizer:
    """Read a byte-level BPE ``tokenizer.json`` document into our tokenizer.

    Raises:
        MicrogptError: When it is not byte-level BPE, or its merges are not in rank order (then rank-based
            encoding would give other ids).
    """
    model = doc.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise MicrogptError(f"{where}: only byte-level BPE tokenizers can be imported (model.type is not BPE)")
    ranks = {_unspell(text, where): int(i) for text, i in model["vocab"].items()}
    last = -1
    for merge in model.get("merges", []):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank = ranks.get(_unspell(a, where) + _unspell(b, where), -1)
        if rank <= last:
            raise MicrogptError(f"{where}: merges are not in id order; microgpt's rank-based BPE would differ")
        last = rank
    pattern = _find_split_pattern(doc.get("pre_tokenizer") or {}) or GPT2_PATTERN
    specials = {t["content"]: int(t["id"]) for t in doc.get("added_tokens", []) if t.get("special")}
    special_ids = set(specials.values())
    ranks = {token: rank for token, rank in ranks.items() if rank not in special_ids}  # GPT-2 lists them twice
    return Tokenizer(ranks, pattern, specials, name="hf")


def _find_split_pattern(pre: Mapping[str, Any]) -> str | None:
    if pre.get("type") == "Split":
        regex_text = (pre.get("pattern") or {}).get("Regex")
        return str(regex_text) if regex_text else None
    for child in pre.get("pretokenizers", []) or []:
        found = _find_split_pattern(child)
        if found:
            return found
    return None


def tokenizer_from_hf_folder(folder: Path) -> Tokenizer | None:
    """The tokenizer of a ``transformers`` folder: ``tokenizer.json``, else GPT-2's ``vocab.json`` + ``merges.txt``.

    Returns:
        The tokenizer, or ``None`` when the folder has neither.
    """
    path = folder / "tokenizer.json"
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise MicrogptError(f"{path}: not valid JSON: {error}") from None
        return tokenizer_from_hf_json(doc, str(path))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return Tokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")
    return None
