"""The one typed configuration of glossrec.

Every default is the GLoSS paper's (reference-code) setting unless a comment beside it says what
was measured to justify a change. TOML files in ``configs/`` override these defaults; the CLI
overrides the files. Sections mirror the stages of the data flow.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

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
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """The dataset folder and how an item becomes text."""

    path: Path | None = None
    """Dataset folder with items.jsonl[.gz] and sequences.jsonl[.gz]."""
    title_words: int = Field(25, ge=1)
    """Reference preprocessing caps titles at their first 25 words."""
    item_format: str = "Title: {title}"
    """How one item is written in prompts and indexed for retrieval. Other attributes of the
    items file may be named, e.g. "Title: {title} | Brand: {brand}"."""


class SplitConfig(_Section):
    """Leave-last-out splits and the validation users."""

    valid_fraction: float = Field(0.05, gt=0, lt=1)
    seed: int = 42
    min_length: int = Field(3, ge=3)
    every_prefix: bool = False
    """Paper: one training example per user. True emits every prefix (length >= 1) as well."""


class PromptConfig(_Section):
    """The prompt template and its token budget."""

    template: str = PAPER_TEMPLATE
    max_length: int = Field(1024, ge=32)
    """Token budget of a training text; prompts are cut from the LEFT, whole items first."""
    max_history_items: int | None = Field(None, ge=1)
    """Keep only the newest N history items (then the token budget applies). None = the paper:
    every item that fits. Shorter prompts train and generate faster on a CPU
    (bench/train_speed.py)."""

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
    """auto: bf16 on CUDA, float32 weights on CPU (bf16 autocast is a train/generate option)."""
    load_in_4bit: bool | None = None
    """None: 4-bit NF4 (QLoRA, the paper) when CUDA and bitsandbytes are present."""
    backend: Literal["hf", "unsloth"] = "hf"
    weights: str | None = None
    """Trained weights a run uses when it has no adapter/ of its own: the name of a model this
    project ships (glossrec.weights.SHIPPED, e.g. "smollm2-beauty") or a weights folder."""
    cache_dir: Path | None = None
    """Where the converted embedded model is cached; default ~/.cache/glossrec."""


class LoraConfig(_Section):
    """The LoRA adapter (paper: rank 16, alpha 16, dropout 0, on every projection)."""

    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]


class TrainConfig(_Section):
    """The fine-tuning loop: optimiser, schedule, loss, checkpoints, trackers."""

    learning_rate: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(300, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(4, ge=1)
    epochs: int = Field(10, ge=1)
    patience: int = Field(3, ge=1)
    seed: int = 3407
    loss: Literal["full", "target"] = "full"
    """Paper: causal-LM loss over the whole text. "target": only the next-item tokens + EOS."""
    valid_loss: Literal["train", "target"] = "train"
    """What the validation loss (early stopping, best weights) averages over. "train": the
    training loss's tokens (the paper). "target": the next item's tokens + EOS only, a figure
    that runs trained with different losses or templates can be compared by."""
    method: Literal["lora", "full"] = "lora"
    """Paper: LoRA adapters ([lora]). "full": every weight is trained (small models, ~0.5B at
    most on a CPU); the run's adapter/ folder then holds a whole model."""
    init_adapter: str | None = None
    """Start from these trained weights instead of a fresh adapter: a LoRA adapter folder (same
    [lora] shape) or the name of a shipped model (see glossrec.weights.SHIPPED). Lets a long
    training continue over several runs."""
    start_examples: int = Field(0, ge=0)
    """Begin the first epoch this many examples into its shuffled order (rounded down to whole
    micro-batches). A run continued from init_adapter with the same seed then sees the examples
    that adapter has not seen, rather than replaying the ones it was trained on."""
    max_batch_tokens: int | None = Field(1024, ge=32)
    """Memory bound: a micro-batch whose padded size exceeds this many tokens is run in parts
    (same gradient: a step's loss is a token mean). None: never split. Measured on full Beauty
    (bench/train_speed.py): see the README for peak RSS with and without."""
    schedule: Literal["linear", "constant"] = "linear"
    """Paper: linear decay to 0 at the last step, after warm-up. "constant" keeps the rate after
    warm-up: a training continued over several runs (larger max_steps each time) has no known
    last step, and a linear schedule would restart its decay at every extension."""
    group_by_length: bool = True
    """Cut micro-batches from length-sorted windows (dynamic padding wastes less). The paper's
    Trainer did not; measured in bench/train_speed.py."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (CPU budgets); None = the epochs."""
    max_examples: int | None = Field(None, ge=1)
    """Train on a reproducible random subset of this many examples; None = all."""
    max_valid_examples: int | None = Field(None, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    """Validate every N optimizer steps instead of every epoch (long CPU epochs)."""
    save_steps: int = Field(50, ge=1)
    """Checkpoint (adapter + optimizer) every N optimizer steps so a killed run resumes."""
    bf16: bool | None = None
    """None: bf16 on CUDA; on CPU, bf16 autocast only where the CPU has native bf16
    (AVX512-BF16/AMX). Measured on this project's AVX2-only AMD EPYC, one SmolLM2 step on 4
    Beauty texts: fp32 57 s, bf16 autocast 463 s (emulated)."""
    optim: str | None = None
    """None: paged 8-bit AdamW on CUDA (paper), torch AdamW on CPU."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Gradient clipping (the transformers Trainer default the reference code ran with)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory (a SmolLM2 micro-batch of 4
    Beauty texts peaks at ~4 GB in fp32 without it), ~30% more compute. Always on with 4-bit
    QLoRA loading, as in the paper's Unsloth setup."""
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    """Experiment trackers that receive every logged step (loss, lr, tokens, validation loss)
    from the main process: tensorboard (RUN_DIR/tensorboard), mlflow (MLFLOW_TRACKING_URI, else
    RUN_DIR/mlruns), wandb (its own settings; WANDB_MODE=offline works without a network).
    Each is imported only when named (extra: glossrec[tracking])."""

    @field_validator("optim")
    @classmethod
    def _known_optim(cls, v: str | None) -> str | None:
        known = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit")
        if v is not None and v not in known:
            raise ValueError(f"unknown optimizer {v!r} (known: {', '.join(known)})")
        return v


class GenerateConfig(_Section):
    """Beam search, catalog grounding, backends and workers."""

    num_beams: int = Field(5, ge=1)
    num_return: int = Field(5, ge=1)
    max_new_tokens: int = Field(50, ge=1)
    batch_size: int = Field(8, ge=1)
    backend: Literal["hf", "vllm"] = "hf"
    bf16: bool = False
    """bf16 autocast. fp32 is the exact default: bf16 changed the texts of 2 of 4 users, and on a
    CPU without bf16 units (this dev machine) it ran 3x slower (bench/generation.py); use it on
    GPUs or CPUs with AVX512-BF16/AMX."""
    max_users: int | None = Field(None, ge=1)
    workers: int = Field(1, ge=1)
    """Model replicas generating at once. 1: in this process. N > 1: N Ray actors fed blocks of
    users by Ray Data (glossrec.generate.distributed; extra [ray]), each loading the model once,
    on a local Ray started for the job or on the cluster named by RAY_ADDRESS. Texts are the
    same as with 1 (tested). Measured on 2 cores (bench/generation_workers.py, 32 users): 2
    replicas x 1 thread ran 1.08x as fast as 1 process x 2 threads, Ray's start included, so 1
    stays the default."""
    block_users: int = Field(64, ge=1)
    """Users per Ray Data block (workers > 1): each finished block is written to its own part
    file, so a killed job loses at most the blocks in flight."""
    worker_cpus: int | None = Field(None, ge=1)
    """Cores (torch threads) per replica; None: the cluster's CPUs / workers, at most one node's."""
    worker_gpus: float | None = Field(None, ge=0)
    """GPUs per replica; None: 1 for the vllm backend or when this machine sees CUDA, else 0."""
    stop_at_newline: bool = False
    """Paper: beams run to EOS or max_new_tokens. True also ends a beam at its first newline, as
    at EOS (only the first line is kept anyway), so beams are scored on their first line alone.
    Measured (bench/generation.py, untrained SmolLM2): texts differ for every user and the search
    still runs to max_new_tokens while some beam could improve, so no reliable speed-up; with a
    fine-tuned model (title, then EOS) it rarely matters."""
    constrain: Literal["none", "catalog"] = "none"
    """Paper: "none", free text matched to the catalog afterwards. "catalog": beam search may
    only write catalog item texts (a token trie, glossrec.generate.constrain; hf backend only),
    so each text is one item. Grounded beams run to max(max_new_tokens, longest item + EOS)
    new tokens (a Beauty title is up to 95 tokens), raised automatically; prompts keep their
    max_new_tokens reserve."""
    constrain_exclude_history: bool = True
    """With constrain = "catalog": the user's history items cannot be generated (the probe:
    without it 39% of outputs were history items and nothing was hit)."""
    grounded_score: Literal["beam", "length", "pmi"] = "beam"
    """Order of the grounded beams returned. "beam": beam search's own (with length_penalty 1.0
    that is already sum log-prob / tokens). "length": sum log-prob / tokens (EOS counted),
    rescored by one teacher-forced pass. "pmi": log p(item | prompt) - log p(item | prompt with
    an empty history), which removes the model's prior for token-cheap items ("100% Pure ..."
    ranked first for half of the probe's users). Only the returned beams are re-ranked."""
    prior_weight: float = Field(0.0, ge=0.0, le=2.0)
    """With constrain = "catalog": beam search scores every token by log p(token | prompt) -
    prior_weight x log p(token | prompt with an empty history, same item prefix), so the search
    itself (not only the re-ranking of its survivors) favours items the user's history makes
    likely over items every prompt makes likely (1.0: pointwise mutual information). 0: the
    paper's beam search. Why: trained models' beams collapse onto one generic item (the same
    top item for 184 of 200 validation users after 8,000 examples, README)."""

    grounded_search: Literal["glossrec", "transformers"] = "glossrec"
    """The loop that runs grounded search. "transformers": model.generate with the trie as a
    prefix_allowed_tokens_fn and the prior as a logits processor (a second forward pass).
    "glossrec": glossrec.generate.search, the same search forwarding only live beams, with
    the prior's rows in the beams' pass; it falls back to "transformers" for a model whose KV
    cache cannot be reused. Measured (bench/grounded.py, 24 Beauty validation users, the
    shipped adapter, 2 AVX2 cores): the same lists for 24 of 24 users, PMI-guided search
    1.50x as fast (1.65 against 2.48 s/user), plain grounded beams 1.29x."""

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
    encoder: str = EMBEDDED_ENCODER
    """Sentence-transformers name or path; the paper used intfloat/e5-small-v2 (hub)."""
    e5_prefixes: bool = False
    """Add "query: "/"passage: " (e5 training format). Off = the reference code."""
    faiss: bool = False
    """Use a FAISS inner-product index for dense search (large catalogs)."""
    faiss_index: Literal["flat", "hnsw", "ivf"] = "flat"
    """flat: exact; hnsw / ivf: approximate, for million-item catalogs (bench/ann.py: recall
    against exact search, latency, memory)."""
    faiss_hnsw_m: int = Field(32, ge=4)
    faiss_ef_construction: int = Field(200, ge=8)
    faiss_ef_search: int = Field(256, ge=1)
    """HNSW beam widths. On clustered unit vectors (bench/scale.py's synthetic catalog) 80 / 128
    gave recall@10 0.79 at 50k items and 0.22 at 1M; 200 / 256 gave 0.99 at 50k."""
    faiss_nlist: int | None = Field(None, ge=1)
    """IVF cells; None: 4 sqrt(n_items)."""
    faiss_nprobe: int = Field(32, ge=1)
    encode_batch_size: int = Field(256, ge=1)
    encode_device: str | None = None
    """Torch device for the dense encoder ("cpu", "cuda:0"); None: CUDA when available."""
    bm25_stopwords: str | None = "en"
    bm25_stemmer: str | None = None
    bm25_method: str = "lucene"
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    ranking: Ranking = "paper"
    """paper: top-1 item per text ordered by score; max/rrf: top-k per text fused."""
    serve_ranking: Ranking = "rrf"
    """How the service ranks an LM request's texts. rrf fills k: the items of the texts first
    (in beam order), then their neighbours; "paper" gives at most one item per text. Evaluation
    rows use `ranking`."""
    per_text_k: int = Field(20, ge=1)
    """Hits per text for the max/rrf fusions."""
    rrf_k: int = Field(60, ge=1)
    exclude_history: bool = False
    """Paper: items already in the history stay rankable."""


class EvalConfig(_Section):
    """Which users are scored, cutoffs and segments."""

    split: Literal["test", "valid"] = "test"
    cutoffs: list[int] = [5, 10, 20]
    users: int | None = Field(None, ge=1)
    """Evaluate a reproducible random sample of this many users; None = all."""
    user_seed: int = 0
    cold_max: int = Field(5, ge=1)
    power_min: int | None = None
    """Users with n > power_min are power users. None: the paper's h for a known dataset
    (beauty 14, toys 13, sports 13), else the 90th percentile of lengths (the paper's ~10%)."""


class SASRecConfig(_Section):
    """SASRec-CE (glossrec.baselines.sasrec). Architecture as Kang & McAuley (2018) for the
    sparse Amazon sets (d = 64, 2 blocks, 1 head, length 50, dropout 0.5); full-softmax
    cross-entropy as Klenitskiy & Vasilev (2023)."""

    max_len: int = Field(50, ge=2)
    hidden: int = Field(64, ge=8)
    blocks: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(200, ge=1)
    """At most; training stops when validation NDCG@10 has not improved for `patience` epochs."""
    patience: int = Field(10, ge=1)
    seed: int = 0

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
    """Weighted reciprocal-rank fusion of text and ID-based lists (glossrec.hybrid)."""

    depth: int = Field(100, ge=1)
    """Items per list fused."""
    weights: dict[str, float] | None = None
    """Fixed weights per component (lis, gloss, sasrec, itemknn, pop); None: tuned on the
    validation users over weight_grid x rrf_k_grid."""
    rrf_k: int | None = Field(None, ge=1)
    weight_grid: list[float] = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    rrf_k_grid: list[int] = [10, 60]
    lis: bool = True
    """Fuse Last-Item Search's list."""
    models: list[Path] = []
    """`glossrec baseline` run directories whose ID-based models are fused (a hybrid run's
    config records them, so `glossrec serve --run HYBRID_RUN` serves the same fusion)."""


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
    """The run directory."""

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


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults < TOML file < overrides ({"train": {"max_steps": 10}} or dotted keys)."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        # Relative data/out paths in a config file are relative to the file.
        for section, key in (("data", "path"), (None, "out")):
            holder = raw.get(section, {}) if section else raw
            if isinstance(holder, dict) and isinstance(holder.get(key), str):
                val = Path(holder[key]).expanduser()
                if not val.is_absolute():
                    holder[key] = str((p.parent / val).resolve())
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
