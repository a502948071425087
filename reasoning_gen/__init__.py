"""Offline reasoning generation (ReasVQA chains, vCoT transitional captions) and refinement.

Read in this order:

- :mod:`reasoning_gen.answers`: ``extract_answer(text, options)`` and the detection of sentences
  that state a choice (shared with eval's generation-mode scoring).
- :mod:`reasoning_gen.refine`: ``refine(text, options, strategy)``, the leakage audit, the
  ``refine`` CLI.
- :mod:`data_shards.reasoning_records`: the reasoning-record schema (contract 5), the crash-safe append
  writer, ``load_reasoning(paths)``.
- :mod:`reasoning_gen.prompts`: versioned ReasVQA / vCoT / rephrase prompts.
- :mod:`reasoning_gen.backends`: ``synthetic``, ``openai``, ``transformers``, ``vllm`` behind one
  ``generate(requests) -> results`` interface.
- :mod:`reasoning_gen.generate` / :mod:`reasoning_gen.merge`: the sharded, resumable job and the
  merge of its rank files.

CLI: ``python -m reasoning_gen {generate,refine,merge} ...``. Must not import ``train``.
"""

# ``refine`` the function is not re-exported here: it would shadow the ``reasoning_gen.refine``
# module (``import reasoning_gen.refine as m`` would then give the function).
from data_shards.reasoning_records import load_reasoning
from reasoning_gen.answers import extract_answer

__all__ = ["extract_answer", "load_reasoning"]
