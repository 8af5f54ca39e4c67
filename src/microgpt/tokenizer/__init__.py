"""Our own byte-level BPE tokenizer, and OpenAI's pretrained encodings loaded into it."""
