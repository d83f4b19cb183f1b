"""Visual-token pruning inside Hugging Face VLMs, with no fine-tuning.

    from vtsel import Budget
    from vtsel.integrations import attach, prune_inputs

    handle = attach(model, method, Budget(keep=0.4))   # LLaVA-NeXT or InternVL, loaded as usual
    inputs = prune_inputs(handle, processor(images=..., text=..., return_tensors="pt"))
    model.generate(**inputs)                             # or model(**inputs)
    handle.detach()                                      # the model is exactly as before

``method`` is any ``vtsel.methods.SelectionMethod`` (the trained selector or a baseline) or an
exported ``TokenSelector``, chosen before the LLM, or ``vtsel.llm_methods.FastV()`` /
``PyramidDrop()``, dropped inside it (``llm_pruning``). ``attach`` also works as a context
manager.
"""

from vtsel.integrations.attach import attach, prune_inputs
from vtsel.integrations.handle import Encoding, PruningHandle
from vtsel.integrations.internvl import InternVLPruning
from vtsel.integrations.llava_next import LlavaNextPruning
from vtsel.integrations.llm_pruning import LLMPruningHandle

__all__ = [
    "Encoding",
    "InternVLPruning",
    "LLMPruningHandle",
    "LlavaNextPruning",
    "PruningHandle",
    "attach",
    "prune_inputs",
]
