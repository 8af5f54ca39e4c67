"""Our own byte-level BPE tokenizer, and OpenAI's pretrained encodings loaded into it.

>>> from microgpt.tokenizer import Tokenizer
>>> tok = Tokenizer.train(["the cat sat on the mat"] * 10, vocab_size=300)
>>> tok.decode(tok.encode("the cat"))
'the cat'
"""

from microgpt.tokenizer.config import TokenizerConfig, build_tokenizer
from microgpt.tokenizer.decoding import UnknownTokenError
from microgpt.tokenizer.specials import DisallowedSpecialError
from microgpt.tokenizer.tokenizer import Tokenizer

__all__ = ["DisallowedSpecialError", "Tokenizer", "TokenizerConfig", "UnknownTokenError", "build_tokenizer"]
