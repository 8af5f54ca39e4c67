"""The adapter between microgpt's GPT and Hugging Face ``transformers`` folders: export, import, GPT-2 weights.

Every architecture microgpt ships leaves without custom code, as the family that computes the same function:
``GPT2LMHeadModel`` (learned positions), ``LlamaForCausalLM`` (RoPE, SwiGLU), ``Qwen3ForCausalLM`` (RoPE, SwiGLU,
QK-norm) or ``ArceeForCausalLM`` (RoPE, ReLU²); folders of each import back. The model itself knows nothing of
these names (STYLE.md, "one naming lineage"):

- :mod:`~microgpt.model.hf.families` — which family a config is, and ``config.json`` both ways;
- :mod:`~microgpt.model.hf.weights` — the one table of tensor names, both ways;
- :mod:`~microgpt.model.hf.folder` — reading and writing folders and checkpoints, OpenAI's GPT-2.

>>> model, tokenizer = import_hf("exported/")  # doctest: +SKIP
>>> export_hf(model, tokenizer, "exported-again/")  # doctest: +SKIP
"""

from microgpt.model.hf.families import HF_CLASSES, Arch, config_from_hf, config_to_hf, export_arch
from microgpt.model.hf.folder import (
    GPT2_HUB_FILES,
    GPT2_SIZES,
    export_hf,
    import_hf,
    import_to_checkpoint,
    load_pretrained_gpt2,
    model_from_hf,
    read_safetensors,
)
from microgpt.model.hf.weights import state_dict_from_hf, state_dict_to_hf

__all__ = [
    "GPT2_HUB_FILES",
    "GPT2_SIZES",
    "HF_CLASSES",
    "Arch",
    "config_from_hf",
    "config_to_hf",
    "export_arch",
    "export_hf",
    "import_hf",
    "import_to_checkpoint",
    "load_pretrained_gpt2",
    "model_from_hf",
    "read_safetensors",
    "state_dict_from_hf",
    "state_dict_to_hf",
]
