"""Named, deterministic tokenizers that weigh Datanet rows, with no model and no torch.

What it does: `count_tokens(name, text)` counts tokens under a tokenizer named in version manifests. "words-v1":
a token is a maximal run of Unicode word characters (Python `re` `\\w+`: letters, digits, underscore, any script)
or any single other non-space character (punctuation, symbols, emoji code points); whitespace separates and is
never a token. `words("Don't panic!")` is ["Don", "'", "t", "panic", "!"] (5 tokens). The text is counted as
given (rows are NFC-normalised before they are stored).
What it does not do: the base model's tokenizer. A later tokenizer gets a new name ("hf:<model>@<revision>"), and
every manifest records which one its weights were counted under, so old versions stay verifiable.
"""

from __future__ import annotations

import re

from openlora.datanets.errors import DatanetError

WORDS_V1 = "words-v1"
_WORDS_V1 = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """The tokens of `text` under words-v1."""
    return _WORDS_V1.findall(text)


_TOKENIZERS = {WORDS_V1: lambda text: sum(1 for _ in _WORDS_V1.finditer(text))}


def count_tokens(name: str, text: str) -> int:
    try:
        fn = _TOKENIZERS[name]
    except KeyError:
        raise DatanetError(f"unknown tokenizer {name!r}: this node knows {', '.join(sorted(_TOKENIZERS))}") from None
    return fn(text)


def check_tokenizer(name: str) -> str:
    if name not in _TOKENIZERS:
        raise DatanetError(f"unknown tokenizer {name!r}: this node knows {', '.join(sorted(_TOKENIZERS))}")
    return name
