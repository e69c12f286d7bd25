"""The one typed configuration of glossrec.

Every default is the GLoSS paper's (reference-code) setting unless a comment beside it says what
was measured to justify a change. TOML files in ``configs/`` override these defaults; the CLI
overrides the files. Sections mirror the stages of the data flow.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from glossrec.errors import ConfigError

PAPER_TEMPLATE = (
    "Below is a customer's purchase history on Amazon, listed in chronological order "
    "(earliest to latest). \n"
    "Each item is represented by the following format: Title: <item title> \n"
    "Based on this history, predict **only one** item the customer is most likely to purchase "
    "next in the same format.\n"
    "\n"
    "### Purchase history:\n"
    "{history}\n"
    "\n"
    "### Next item:\n"
    "{target}"
)

Ranking = Literal["paper", "max", "rrf"]
"""How one user's per-text search hits become one ranked list (glossrec.retrieve.ranking)."""

EMBEDDED_LLM = "embedded:smollm2"
EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"


class _Section(BaseModel):
    # Unknown keys are errors: a typo in a TOML file must not silently fall back to a default.
    # Attribute docstrings become the fields' descriptions (docs/config.md is made from them).
    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              use_attribute_docstrings=True)


class DataConfig(_Section):
    """The dataset folder and how an item becomes text."""

    path: Path | None = None
    """Dataset folder with items.jsonl[.gz] and sequences.jsonl[.gz] (docs/data-format.md)."""
    title_words: int = Field(25, ge=1)
    """Titles are cut to their first N words, as the reference preprocessing does."""
    item_format: str = "Title: {title}"
    """How one item is written in prompts and indexed for retrieval.

    Other attributes of the items file may be named, e.g. "Title: {title} | Brand: {brand}"."""


class SplitConfig(_Section):
    """Leave-last-out splits and the validation users."""

    valid_fraction: float = Field(0.05, gt=0, lt=1)
    """Share of users held out for validation (their second-to-last item is the target)."""
    seed: int = 42
    """Seed of the validation users' draw (the reference code's)."""
    min_length: int = Field(3, ge=3)
    """Users with fewer items are dropped (a history, a validation and a test item)."""
    every_prefix: bool = False
    """Train on every prefix of a user's sequence, not only the paper's one example per user."""


class PromptConfig(_Section):
    """The prompt template and its token budget."""

    template: str = PAPER_TEMPLATE
    """The training and generation text, with {history} and {target}; the paper's by default.

    Must end with {target}: generation continues there."""
    max_length: int = Field(1024, ge=32)
    """Token budget of a training text; prompts are cut from the left, whole items first."""
    max_history_items: int | None = Field(None, ge=1)
    """Keep only the newest N history items (then the token budget applies); none: every item.

    Shorter prompts train and generate faster on a CPU (docs/results.md, "Training speed")."""

    @field_validator("template")
    @classmethod
    def _has_fields(cls, v: str) -> str:
        for name in ("{history}", "{target}"):
            if name not in v:
                raise ValueError(f"template must contain {name}")
        if not v.endswith("{target}"):
            raise ValueError("template must end with {target} (generation continues there)")
        return v


class ModelConfig(_Section):
    """The causal LM (hub name, folder, GGUF, embedded) and trained weights to use."""

    name: str = EMBEDDED_LLM
    """A hub name (meta-llama/Llama-3.2-1B), a local directory, or "embedded:smollm2"."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; auto: bf16 on CUDA, float32 on CPU (bf16 autocast is a train/generate key)."""
    load_in_4bit: bool | None = None
    """4-bit NF4 weights (QLoRA, the paper); none: on when CUDA and bitsandbytes are present.

    true: 4-bit on any device the installed bitsandbytes supports (on CPU a release with a CPU
    backend, glossrec.models.BNB_CPU_FLOORS); false: full-precision weights."""
    backend: Literal["hf", "unsloth"] = "hf"
    """How the model is loaded for training: transformers + peft, or Unsloth (GPU)."""
    weights: str | None = None
    """Trained weights for a run that has none of its own: a shipped model's name or a folder.

    Shipped names are listed in glossrec.weights.SHIPPED, e.g. "smollm2-beauty"."""
    cache_dir: Path | None = None
    """Where the converted embedded model is cached; none: $GLOSSREC_CACHE or ~/.cache/glossrec."""


class LoraConfig(_Section):
    """The LoRA adapter (paper: rank 16, alpha 16, dropout 0, on every projection)."""

    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: int = Field(16, ge=1)
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA branch."""
    target_modules: list[str] = [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]
    """The linear layers that get adapters (all seven projections of a Llama block)."""


class TrainConfig(_Section):
    """The fine-tuning loop: optimiser, schedule, loss, checkpoints, trackers."""

    learning_rate: float = Field(1e-4, gt=0)
    """Peak learning rate (after warm-up)."""
    warmup_steps: int = Field(300, ge=0)
    """Optimizer steps of linear warm-up from 0."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay."""
    batch_size: int = Field(4, ge=1)
    """Texts per micro-batch (per process)."""
    grad_accum: int = Field(4, ge=1)
    """Micro-batches per optimizer step (effective batch: batch_size x grad_accum x processes)."""
    epochs: int = Field(10, ge=1)
    """Passes over the training examples, at most (early stopping may end sooner)."""
    patience: int = Field(3, ge=1)
    """Validations without a better validation loss before training stops."""
    seed: int = 3407
    """Seed of the weights' initialisation and of the examples' order."""
    loss: Literal["full", "target"] = "full"
    """Which tokens the loss covers: the whole text (the paper) or the next item's only."""
    valid_loss: Literal["train", "target"] = "train"
    """Which tokens the validation loss covers: the training loss's (the paper) or the target's.

    "target" gives a figure that runs trained with different losses or templates can be
    compared by (the next item's tokens + EOS)."""
    valid_first_tokens: int = Field(0, ge=0)
    """Also record, at each validation, the loss of the next item's first N tokens
    (``valid_loss_first`` in train_log.jsonl); 0: not recorded.

    With a catalog-grounded search the first tokens of a title are where the model chooses an
    item; the rest is nearly fixed by the catalog. Needs target-token validation texts
    (``valid_loss = "target"``, or a target-only ``loss``)."""
    head_tokens: int = Field(0, ge=0)
    """The first N tokens of every item in a training text (each history item's that the loss
    covers, and the next item's) weigh ``head_weight`` in the loss; 0: every token weighs 1
    (the paper).

    A title's first tokens are where the model chooses an item (see ``valid_first_tokens``);
    with whole-text loss most label tokens spell out the rest of titles, which the catalog
    nearly fixes. The weight moves the gradient from spelling titles to choosing them."""
    head_weight: float = Field(1.0, gt=0)
    """The loss weight of the ``head_tokens``; a step's loss is then a weighted token mean."""
    method: Literal["lora", "full"] = "lora"
    """LoRA adapters (the paper) or "full": every weight is trained (small models).

    With "full" the run's adapter/ folder holds a whole model."""
    init_adapter: str | None = None
    """Start from these trained weights instead of a fresh adapter: a folder or a shipped name.

    A LoRA adapter folder of the same [lora] shape, or a shipped model (glossrec.weights.SHIPPED).
    Lets a long training continue over several runs."""
    start_examples: int = Field(0, ge=0)
    """Begin this many examples into the run's seeded order of epochs.

    At the first micro-batch not wholly taken by that many examples (micro-batches are counted
    with their real sizes, some short); past one epoch (every training example) it starts in a
    later epoch, in that epoch's order. A run continued from init_adapter with the same seed
    then sees the examples that adapter has not seen, rather than replaying them: set it to
    the adapter's examples_seen_total (its glossrec_train.json); another nonzero value is
    warned about."""
    max_batch_tokens: int | None = Field(1024, ge=32)
    """Memory bound: a micro-batch whose padded size exceeds it runs in parts; none: never split.

    The gradient is the same: a step's loss is a token mean."""
    trim_memory: bool = False
    """Return freed memory to the OS after every micro-batch (glibc): the lowest peak RSS.

    false: glibc keeps freed memory for the next micro-batch instead of faulting large tensors
    in afresh each time, faster for a higher peak RSS (docs/results.md, "Training speed")."""
    schedule: Literal["linear", "constant"] = "linear"
    """Learning-rate schedule after warm-up: linear decay to 0 (the paper) or constant.

    "constant" suits a training extended over several runs, which has no known last step."""
    group_by_length: bool = True
    """Cut micro-batches from length-sorted windows, so dynamic padding wastes less.

    The paper's Trainer did not (docs/results.md, "Training speed")."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (CPU budgets); none: the epochs decide."""
    max_examples: int | None = Field(None, ge=1)
    """Train on a reproducible random subset of this many examples; none: all."""
    max_valid_examples: int | None = Field(None, ge=1)
    """Validate on a reproducible random subset of this many validation users; none: all."""
    eval_steps: int | None = Field(None, ge=1)
    """Validate every N optimizer steps; none: every epoch (the paper)."""
    save_steps: int = Field(50, ge=1)
    """Checkpoint (weights + optimizer) every N optimizer steps, so a killed run resumes."""
    bf16: bool | None = None
    """bf16 autocast; none: on CUDA, and on CPUs with native bf16 (AVX512-BF16 or AMX).

    On a CPU without native bf16 it is emulated and several times slower than fp32
    (docs/results.md, "Training speed")."""
    bf16_weights: bool = True
    """Under bf16 autocast with LoRA, keep the frozen base weights of the linear layers in bf16
    (cast once) instead of casting them at every call: the same numbers, fewer copies."""
    optim: str | None = None
    """The optimizer; none: 8-bit AdamW for 4-bit QLoRA (the paper), else torch AdamW on CPU.

    none: paged 8-bit AdamW on CUDA, unpaged 8-bit AdamW for 4-bit QLoRA on a CPU, torch AdamW
    for full-precision CPU training. An 8-bit AdamW the installed bitsandbytes cannot run on the
    device falls back to torch AdamW, with the reason logged."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient clipping norm (the transformers Trainer default the reference code ran with)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for ~30% more compute.

    Always on with 4-bit QLoRA loading, as in the paper's Unsloth setup."""
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    """Experiment trackers that receive every logged step (extra: glossrec[tracking]).

    tensorboard writes RUN_DIR/tensorboard; mlflow uses MLFLOW_TRACKING_URI, else RUN_DIR/mlruns;
    wandb its own settings (WANDB_MODE=offline works without a network). Each is imported only
    when named."""

    @field_validator("optim")
    @classmethod
    def _known_optim(cls, v: str | None) -> str | None:
        known = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit")
        if v is not None and v not in known:
            raise ValueError(f"unknown optimizer {v!r} (known: {', '.join(known)})")
        return v

    @model_validator(mode="after")
    def _first_tokens_of_a_target(self) -> "TrainConfig":
        if self.valid_first_tokens and self.valid_loss == "train" and self.loss == "full":
            raise ValueError('valid_first_tokens needs validation texts scored on the next item: '
                             'set valid_loss = "target"')
        return self

    @property
    def weighs_heads(self) -> bool:
        """Whether items' first tokens weigh other than 1 in the loss (head_tokens/head_weight)."""
        return self.head_weight != 1.0

    @model_validator(mode="after")
    def _head_weight_needs_head_tokens(self) -> "TrainConfig":
        if self.weighs_heads and not self.head_tokens:
            raise ValueError("head_weight weighs the head_tokens of each item: set head_tokens")
        return self


class GenerateConfig(_Section):
    """Beam search, catalog grounding, backends and workers."""

    num_beams: int = Field(5, ge=1)
    """Beams of the beam search."""
    num_return: int = Field(5, ge=1)
    """Texts returned per user (at most num_beams)."""
    max_new_tokens: int = Field(50, ge=1)
    """New tokens per text, at most (grounded beams raise it to the longest item's length)."""
    batch_size: int = Field(8, ge=1)
    """Users per beam-search batch (glossrec's grounded search in beam order: users searched
    at once, the next one joining as soon as one is final)."""
    backend: Literal["hf", "vllm"] = "hf"
    """transformers (CPU and GPU) or vLLM (GPU; extra glossrec[vllm])."""
    bf16: bool = False
    """bf16 weights (float32 ones cast once, after the adapter is merged) and autocast; fp32 is
    exact. Use it on GPUs or CPUs with AVX512-BF16 or AMX.

    bf16 changes some users' texts, and on a CPU without bf16 units it is emulated and slower
    (docs/results.md, "Generation speed")."""
    max_users: int | None = Field(None, ge=1)
    """Generate for a reproducible random sample of this many users; none: evaluate.users."""
    workers: int = Field(1, ge=1)
    """Model replicas generating at once: 1 in this process, N > 1 as Ray actors.

    N > 1 feeds blocks of users to N Ray actors by Ray Data (glossrec.generate.distributed;
    extra glossrec[ray]), each loading the model once, on a local Ray started for the job or on
    the cluster named by RAY_ADDRESS. Texts are the same as with 1 (tested)."""
    block_users: int = Field(64, ge=1)
    """Users per Ray Data block; each finished block is written at once, so a kill loses little."""
    worker_cpus: int | None = Field(None, ge=1)
    """Cores (torch threads) per replica; none: the cluster's CPUs / workers, at most one node's."""
    worker_gpus: float | None = Field(None, ge=0)
    """GPUs per replica; none: 1 for the vllm backend or when this machine sees CUDA, else 0."""
    stop_at_newline: bool = False
    """Also end a beam at its first newline, as at EOS (the paper: EOS or max_new_tokens)."""
    constrain: Literal["none", "catalog"] = "none"
    """"catalog": beams may only write catalog item texts (a token trie); "none": the paper.

    Each text is then one item (glossrec.generate.constrain; hf backend only). Grounded beams run
    to max(max_new_tokens, longest item + EOS) new tokens; prompts keep their max_new_tokens
    reserve."""
    constrain_exclude_history: bool = True
    """With constrain = "catalog": the user's history items cannot be generated."""
    grounded_score: Literal["beam", "length", "pmi"] = "beam"
    """Order of the grounded beams returned: beam search's, length-normalised, or PMI.

    "length": sum log-prob / tokens (EOS counted), rescored by one teacher-forced pass. "pmi":
    log p(item | prompt) - rescore_prior_weight x log p(item | prompt with an empty history),
    which removes the model's prior for token-cheap items. Only the returned beams are
    re-ranked: with more beams than texts kept (num_beams > num_return), the search finds the
    candidates and the re-ranking chooses among them."""
    rescore_prior_weight: float = Field(1.0, ge=0.0, le=2.0)
    """With grounded_score = "pmi": the prior's weight w in the re-ranking score log p(item |
    prompt) - w log p(item | empty history) (1.0: pointwise mutual information). Read from the
    prior table when generate.prior_table is on."""
    prior_weight: float = Field(0.0, ge=0.0, le=2.0)
    """PMI-guided search: subtract prior_weight x the empty-history log-prob at every token.

    With constrain = "catalog", beam search scores each token by log p(token | prompt) -
    prior_weight x log p(token | prompt with an empty history, same item prefix), so the search
    itself favours items the user's history makes likely over items every prompt makes likely
    (1.0: pointwise mutual information; 0: the paper's beam search)."""
    prior_table: bool = False
    """With prior_weight > 0: read the prior from a table made once per model and catalog,
    not from one more row per item prefix in every search step (glossrec's loop).

    The table (glossrec.generate.prior_table) costs one forward row per catalog item token,
    the rows it replaces about 100 per user on Beauty, so it pays for runs of a few thousand
    users or more and for a long-lived service; items added later are scored as they come.
    Its values equal the search's rows up to fp32 rounding (docs/results.md)."""
    grounded_search: Literal["glossrec", "transformers"] = "glossrec"
    """The loop that runs grounded search: glossrec's own, or transformers' generate.

    "glossrec" (glossrec.generate.search) runs the same search forwarding only live beams, with
    the prior's rows in the beams' pass, and falls back to "transformers" for a model whose KV
    cache cannot be reused. Both give the same lists (tested; docs/results.md)."""

    @field_validator("prior_weight")
    @classmethod
    def _prior_needs_catalog(cls, v: float, info: Any) -> float:
        if v > 0 and info.data.get("constrain", "none") != "catalog":
            raise ValueError('prior_weight > 0 needs constrain = "catalog" (the prior is read '
                             "from the catalog trie's branches)")
        return v

    @field_validator("num_return")
    @classmethod
    def _return_le_beams(cls, v: int, info: Any) -> int:
        beams = info.data.get("num_beams", 5)
        if v > beams:
            raise ValueError(f"num_return ({v}) cannot exceed num_beams ({beams})")
        return v


class RetrieveConfig(_Section):
    """BM25 / dense / FAISS retrieval and the fusion of texts into items."""

    retriever: Literal["dense", "bm25"] = "dense"
    """How a text is matched to catalog items: a sentence encoder (cosine) or BM25."""
    encoder: str = EMBEDDED_ENCODER
    """Sentence-transformers name or path; the paper used intfloat/e5-small-v2 (hub)."""
    e5_prefixes: bool = False
    """Add "query: " / "passage: " (e5's training format); off: the reference code."""
    faiss: bool = False
    """Use a FAISS inner-product index for dense search (large catalogs; extra glossrec[faiss])."""
    faiss_index: Literal["flat", "hnsw", "ivf"] = "flat"
    """FAISS index kind: flat is exact; hnsw and ivf are approximate, for million-item catalogs."""
    faiss_hnsw_m: int = Field(32, ge=4)
    """HNSW links per node."""
    faiss_ef_construction: int = Field(200, ge=8)
    """HNSW beam width while building (recall at scale: docs/scaling.md)."""
    faiss_ef_search: int = Field(256, ge=1)
    """HNSW beam width while searching (recall at scale: docs/scaling.md)."""
    faiss_nlist: int | None = Field(None, ge=1)
    """IVF cells; none: 4 sqrt(number of items)."""
    faiss_nprobe: int = Field(32, ge=1)
    """IVF cells searched per query."""
    encode_batch_size: int = Field(256, ge=1)
    """Texts per encoder batch."""
    encode_device: str | None = None
    """Torch device for the dense encoder ("cpu", "cuda:0"); none: CUDA when available."""
    bm25_stopwords: str | None = "en"
    """Stop-word list of bm25s ("en"), or none."""
    bm25_stemmer: str | None = None
    """PyStemmer language (e.g. "english"; extra glossrec[stemmer]), or none (the reference)."""
    bm25_method: str = "lucene"
    """bm25s scoring variant (lucene, robertson, atire, bm25l, bm25+)."""
    bm25_k1: float = 1.5
    """BM25 term-frequency saturation."""
    bm25_b: float = 0.75
    """BM25 length normalisation."""
    ranking: Ranking = "paper"
    """How a user's texts become one list: paper (top-1 item per text by score), max or rrf."""
    serve_ranking: Ranking = "rrf"
    """How the service ranks an LM request's texts; rrf fills k with the texts' neighbours.

    rrf gives the items of the texts first (in beam order), then their neighbours; "paper" gives
    at most one item per text. Evaluation rows use `ranking`."""
    per_text_k: int = Field(20, ge=1)
    """Hits per text for the max and rrf fusions."""
    rrf_k: int = Field(60, ge=1)
    """The k of reciprocal-rank fusion, 1 / (k + rank)."""
    exclude_history: bool = False
    """Remove the user's history items from the ranking; off: the paper keeps them."""


class EvalConfig(_Section):
    """Which users are scored, cutoffs and segments."""

    split: Literal["test", "valid"] = "test"
    """The users scored: test (last item) or valid (second-to-last, validation users only)."""
    cutoffs: list[int] = [5, 10, 20]
    """The K of Recall@K, NDCG@K and MRR@K."""
    users: int | None = Field(None, ge=1)
    """Evaluate a reproducible random sample of this many users; none: all."""
    user_seed: int = 0
    """Seed of that sample."""
    cold_max: int = Field(5, ge=1)
    """Users with at most this many items are the cold-start segment."""
    power_min: int | None = None
    """Users with more items are power users; none: the paper's h or the 90th percentile.

    The paper's h for a known dataset: beauty 14, toys 13, sports 13."""


class SASRecConfig(_Section):
    """SASRec-CE (glossrec.baselines.sasrec). Architecture as Kang & McAuley (2018) for the
    sparse Amazon sets (d = 64, 2 blocks, 1 head, length 50, dropout 0.5); full-softmax
    cross-entropy as Klenitskiy & Vasilev (2023)."""

    max_len: int = Field(50, ge=2)
    """Items of history the model reads."""
    hidden: int = Field(64, ge=8)
    """Embedding and hidden size."""
    blocks: int = Field(2, ge=1)
    """Self-attention blocks."""
    heads: int = Field(1, ge=1)
    """Attention heads (must divide hidden)."""
    dropout: float = Field(0.5, ge=0, lt=1)
    """Dropout rate."""
    learning_rate: float = Field(1e-3, gt=0)
    """Adam learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """Adam weight decay."""
    batch_size: int = Field(128, ge=1)
    """Sequences per batch."""
    epochs: int = Field(200, ge=1)
    """Epochs at most; training stops when validation NDCG@10 stalls for `patience` epochs."""
    patience: int = Field(10, ge=1)
    """Epochs without a better validation NDCG@10 before training stops."""
    seed: int = 0
    """Seed of initialisation and batching."""

    @model_validator(mode="after")
    def _heads_divide(self) -> "SASRecConfig":
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class ItemKNNConfig(_Section):
    """Item-kNN: cosine item-item neighbours summed over the history
    (glossrec.baselines.neighbours)."""

    neighbours: int = Field(100, ge=1)
    """Most similar items kept per item."""


class HybridConfig(_Section):
    """The fusion of text and ID-based lists into one (glossrec.hybrid): weighted
    reciprocal-rank fusion, or interleaving."""

    fusion: Literal["rrf", "interleave"] = "rrf"
    """How the components' lists become one: weighted rrf, or interleaving (places per list).

    "rrf": weighted reciprocal-rank fusion (weights, rrf_k). "interleave": every block of
    places is filled by the components in order (lis, gloss, then the models), each taking
    `slots[name]` places with its best items not yet listed; a component out of items
    passes its place on. The LM's component is then its own ranked list (retrieve.ranking, the
    GLoSS row's), not one list per text."""
    depth: int = Field(100, ge=1)
    """Items per list fused."""
    weights: dict[str, float] | None = None
    """Fixed weights per component (lis, gloss, sasrec, itemknn, pop); none: tuned.

    Tuned on the validation users over weight_grid x rrf_k_grid."""
    rrf_k: int | None = Field(None, ge=1)
    """The fusion's rrf k with fixed weights; none: retrieve.rrf_k (or tuned)."""
    weight_grid: list[float] = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    """Weights tried per component when tuning."""
    rrf_k_grid: list[int] = [10, 60]
    """rrf k values tried when tuning."""
    slots: dict[str, int] | None = None
    """With fusion = "interleave": places per block for each component; none: tuned on the
    validation users over every split of `block` places among the components."""
    block: int = Field(5, ge=1)
    """With fusion = "interleave" and slots tuned: the places a block's slots share (the
    block repeats down the list)."""
    tune_users: int | None = Field(None, ge=1)
    """Tune on a reproducible random sample of this many validation users; none: all of them.

    The sample is drawn with evaluate.user_seed, as `glossrec generate --split valid --users N`
    draws it, so generated texts for that many validation users fit the tuning."""
    lis: bool = True
    """Fuse Last-Item Search's list."""
    models: list[Path] = []
    """`glossrec baseline` run directories whose ID-based models are fused.

    A hybrid run's config records them, so `glossrec serve --run HYBRID_RUN` serves the same
    fusion."""

    def share(self, name: str) -> float:
        """A component's part in the fusion: its weight (rrf) or its slots (interleave); 0
        means it takes no part."""
        parts = self.slots if self.fusion == "interleave" else self.weights
        return float((parts or {}).get(name, 0))

    @property
    def fixing(self) -> dict[str, Any]:
        """The fields that fix the fusion: slots (interleave), or weights and rrf_k (rrf)."""
        if self.fusion == "interleave":
            return {"slots": self.slots}
        return {"weights": self.weights, "rrf_k": self.rrf_k}

    @property
    def is_fixed(self) -> bool:
        """Whether the fusion is fixed (weights for rrf, slots for interleaving), not tuned."""
        return (self.slots if self.fusion == "interleave" else self.weights) is not None

    @field_validator("slots")
    @classmethod
    def _slots_fill_places(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is not None and (any(n < 0 for n in v.values()) or sum(v.values()) == 0):
            raise ValueError(f"slots must be counts >= 0 with at least one place ({v})")
        return v


class _Stages(_Section):
    """GLoSS's stages in data-flow order, one section each."""

    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    prompt: PromptConfig = PromptConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    generate: GenerateConfig = GenerateConfig()
    retrieve: RetrieveConfig = RetrieveConfig()
    evaluate: EvalConfig = EvalConfig()


class RunConfig(_Stages):
    """The whole configuration: GLoSS's stages, then the models it is compared with and their
    fusion, each section a TOML table of the same name; and the run directory."""

    sasrec: SASRecConfig = SASRecConfig()
    itemknn: ItemKNNConfig = ItemKNNConfig()
    hybrid: HybridConfig = HybridConfig()
    out: Path | None = None
    """The run directory (a file's relative path is relative to the file)."""

    def updated(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with some keys of some sections changed, validated:
        ``cfg.updated(train={"max_steps": 10}, retrieve={"retriever": "bm25"})``."""
        data = self.model_dump()
        for name, values in sections.items():
            data[name] = {**data[name], **values}
        try:
            return RunConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_format_error(e, "<updated config>")) from None


def _format_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg']}")
    return f"{source}: invalid config: " + "; ".join(parts)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_file(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """One config file's keys laid over those of the file its top-level `base` key names, and
    the base files read, nearest first.

    `base = "other.toml"` (relative to the file) lets a config say only how it differs from
    another: tables merge key by key, the file's own keys win, and a base may name a base of its
    own. Relative `data.path` and `out` are relative to the file that writes them."""
    if not path.is_file():
        named_by = f" (the base of {chain[-1]})" if chain else ""
        raise ConfigError(f"{path}: config file not found{named_by}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for section, key in (("data", "path"), (None, "out")):
        holder = raw.get(section, {}) if section else raw
        if isinstance(holder, dict) and isinstance(holder.get(key), str):
            val = Path(holder[key]).expanduser()
            if not val.is_absolute():
                holder[key] = str((path.parent / val).resolve())
    base = raw.pop("base", None)
    if base is None:
        return raw, []
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: should be the path of a TOML config file, got {base!r}")
    base_path = (path.parent / Path(base).expanduser()).resolve()
    chain = (*chain, path.resolve())
    if base_path in chain:
        loop = " -> ".join(str(c) for c in (*chain, base_path))
        raise ConfigError(f"{path}: base: {base!r} makes a loop: {loop}")
    below, bases = _read_file(base_path, chain)
    return _merge(below, raw), [base_path, *bases]


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults < base files < TOML file < overrides ({"train": {"max_steps": 10}} or dotted
    keys). A file's `base` key names the file it builds on (:func:`_read_file`)."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        raw, bases = _read_file(Path(path))
        source = str(path) + (f" (over {', '.join(map(str, bases))})" if bases else "")
    if overrides:
        nested: dict[str, Any] = {}
        for k, v in overrides.items():
            if v is None:
                continue
            if "." in k:
                sec, key = k.split(".", 1)
                nested.setdefault(sec, {})[key] = v
            elif isinstance(v, dict):
                nested[k] = _merge(nested.get(k, {}), v)
            else:
                nested[k] = v
        raw = _merge(raw, nested)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def config_to_toml(cfg: RunConfig) -> str:
    """Serialize a resolved config (None values are omitted: TOML has no null)."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    lines: list[str] = []
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for k, v in top.items():
        lines.append(f"{k} = {_toml_value(v)}")
    for sec, vals in data.items():
        if not isinstance(vals, dict):
            continue
        lines.append(f"\n[{sec}]")
        for k, v in vals.items():
            lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


# --- the reference of every key (docs/config.md) -------------------------------------------------

def _type_name(annotation: Any) -> str:
    """A key's type as a reader writes it: `int | None`, `"hf" | "vllm"`, `list[str]`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(f'"{a}"' for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _first_paragraph(doc: str | None) -> str:
    """A key's meaning in one line: its docstring's first paragraph."""
    return " ".join((doc or "").split("\n\n")[0].split())


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if value == PAPER_TEMPLATE:
        return "the paper's template (below)"
    return _toml_value(str(value) if isinstance(value, Path) else value)


def _row(key: str, type_: str, default: str, meaning: str) -> str:
    cells = [f"`{key}`", f"`{type_}`", f"`{default}`", meaning]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def reference_markdown() -> str:
    """docs/config.md: every key of :class:`RunConfig`, its type, default and meaning, by
    section. `glossrec config reference` prints it; a test fails when the file drifts."""
    lines = ["# Configuration reference", "",
             "Every key of glossrec's one typed config (`glossrec.config.RunConfig`), by TOML",
             "section. A TOML file in `configs/` overrides the defaults; `--set section.key=value`",
             "overrides the file; `glossrec config show [CONFIG] [--set ...]` prints the resolved",
             "config. A file may build on another: a top-level `base = \"other.toml\"` (relative to",
             "the file) takes that file's keys, and the file's own keys win, table by table.",
             "Defaults are the GLoSS paper's unless the key says otherwise; measurements",
             "behind a non-paper default are in [results.md](results.md).", "",
             "Generated by `glossrec config reference > docs/config.md`; do not edit by hand.", ""]
    top = [(n, f) for n, f in RunConfig.model_fields.items()
           if not (isinstance(f.annotation, type) and issubclass(f.annotation, _Section))]
    for name, field in RunConfig.model_fields.items():
        section = field.annotation
        if not (isinstance(section, type) and issubclass(section, _Section)):
            continue
        lines += [f"## [{name}]", "", _first_paragraph(section.__doc__), "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, f in section.model_fields.items():
            default = _default_text(f.get_default(call_default_factory=True))
            lines.append(_row(key, _type_name(f.annotation), default, _first_paragraph(f.description)))
        lines.append("")
    if top:
        lines += ["## Top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, f in top:
            lines.append(_row(key, _type_name(f.annotation), "none", _first_paragraph(f.description)))
        lines.append("")
    lines += ["## The paper's template", "", "`prompt.template`'s default (`glossrec.config.PAPER_TEMPLATE`):",
              "", "```text", PAPER_TEMPLATE, "```", ""]
    return "\n".join(lines)
