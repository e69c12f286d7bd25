"""Generation: prompts in, several candidate next-item texts per prompt out.

Two backends sit behind one :class:`Generator` protocol: :class:`~glossrec.generate.hf.HFGenerator`
(transformers beam search; CPU or GPU) and :class:`~glossrec.generate.vllm.VLLMGenerator` (vLLM
beam search; GPU). Both post-process with :func:`postprocess`, so a text means the same thing
whichever backend made it. :func:`generate_to_file` writes results as it goes and resumes after a
kill. Importing this package does not import torch: the CLI starts fast and the backends load
only when asked for.

Grounded generation (``generate.constrain = "catalog"``, hf backend only) limits beam search to
catalog item texts (:mod:`glossrec.generate.constrain`); each user's history positions are
passed along as ``exclude`` so they are not generated again.

Modules: :mod:`~glossrec.generate.base` (the protocol, post-processing),
:mod:`~glossrec.generate.factory` (the backend factory),
:mod:`~glossrec.generate.store` (the resumable generations file),
:mod:`~glossrec.generate.stage` (a split's examples -> a generations file, with its settings
fingerprint), :mod:`~glossrec.generate.distributed` (Ray Data over blocks of users),
:mod:`~glossrec.generate.hf`, :mod:`~glossrec.generate.vllm` (the backends),
:mod:`~glossrec.generate.constrain` (the catalog trie) and :mod:`~glossrec.generate.search`
(grounded beam search over any model that offers its :class:`~glossrec.generate.search.
SearchModel` interface; the hf backend does).
"""

from __future__ import annotations

from typing import Any

from glossrec.generate.base import (  # noqa: F401 (Exclusions: importable from here too)
    Exclusions, Generator, encode_prompts, postprocess,
)
from glossrec.generate.factory import make_generator
from glossrec.generate.stage import generate_examples, generation_fingerprint, meta_path  # noqa: F401
from glossrec.generate.store import (  # noqa: F401 (private helpers: tests reach for them here)
    _absorb_parts, _part_files, _scan, generate_to_file, read_generations,
)

__all__ = [
    "Generator", "postprocess", "encode_prompts", "make_generator", "generate_to_file",
    "read_generations", "generate_examples", "generation_fingerprint",
    "HFGenerator", "VLLMGenerator",
]


def __getattr__(name: str) -> Any:
    # The backends import torch (or vllm): load them on first use only.
    if name == "HFGenerator":
        from glossrec.generate.hf import HFGenerator

        return HFGenerator
    if name == "VLLMGenerator":
        from glossrec.generate.vllm import VLLMGenerator

        return VLLMGenerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
