"""The BERT WordPiece tokenizer of Grounding DINO, read with the ``tokenizers`` library.

No transformers at run time: ``tokenizer.json`` (or a ``vocab.txt``) is read as data.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

DELIMITER_TOKENS = ("[CLS]", "[SEP]", ".", "?")
# transformers' clean_up_tokenization: no space before punctuation and English contractions.
_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class GroundingDinoTokenizer:
    """Lower-casing BERT WordPiece tokenizer producing ``[CLS] ... [SEP]`` id sequences.

    Parameters
    ----------
    tokenizer
        A ``tokenizers.Tokenizer``.
    """

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        missing = [t for t in DELIMITER_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"the tokenizer's vocabulary lacks {missing}")

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> GroundingDinoTokenizer:
        """Read ``tokenizer.json``, else ``vocab.txt`` (lower-cased WordPiece), from ``folder``.

        Raises
        ------
        FileNotFoundError
            Neither file exists.
        """
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
        if (folder / "vocab.txt").is_file():
            return cls.from_vocab(folder / "vocab.txt", lowercase=_lowercase(folder))
        raise FileNotFoundError(f"{folder} has no tokenizer.json or vocab.txt")

    @classmethod
    def from_vocab(cls, vocab_file: str | os.PathLike, lowercase: bool = True):
        """A BERT WordPiece tokenizer from a ``vocab.txt`` (one token per line)."""
        from tokenizers import BertWordPieceTokenizer

        return cls(BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase)._tokenizer)

    @property
    def delimiter_token_ids(self) -> tuple[int, ...]:
        """Ids of [CLS], [SEP], "." and "?" (the phrase delimiters)."""
        return tuple(self._tokenizer.token_to_id(t) for t in DELIMITER_TOKENS)

    def encode(self, text: str) -> list[int]:
        """``text`` → token ids with [CLS] first and [SEP] last."""
        return list(self._tokenizer.encode(text).ids)

    def tokens(self, text: str) -> list[str]:
        """``text`` → the WordPiece tokens (with [CLS] and [SEP])."""
        return list(self._tokenizer.encode(text).tokens)

    def decode(self, ids: list[int]) -> str:
        """Token ids → text, WordPiece pieces joined, no space before punctuation."""
        text = self._tokenizer.decode(list(ids), skip_special_tokens=False)
        for old, new in _CLEANUPS:
            text = text.replace(old, new)
        return text


def _lowercase(folder: Path) -> bool:
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text()).get("do_lower_case", True))
        except json.JSONDecodeError:
            return True
    return True


def is_only_punctuation(text: str) -> bool:
    """True when ``text`` has no letter or digit."""
    return re.search(r"\w", text) is None
