"""SASRec with full-softmax cross-entropy (SASRec-CE): the strong ID-based baseline.

Self-attentive sequential recommendation (Kang & McAuley, 2018) trained, as Klenitskiy &
Vasilev (2023) showed it must be to be competitive, with cross-entropy over the whole catalog
at every position instead of one sampled negative. The paper's Table 2 copies SASRec-CE on
Beauty at Recall@5 0.0538; this module trains it on exactly glossrec's split.

The model, in one screen:

- tokens: catalog position + 1 (0 pads); a user's newest ``max_len`` items, left-padded, so the
  last position is always the newest item;
- embedding: item embedding * sqrt(d) + learned position embedding, dropout;
- ``blocks`` pre-norm transformer blocks of causal self-attention (a position attends to itself
  and the real items before it, never after: :func:`attention_mask`) and a ReLU feed-forward;
- the output at a position scores every item by a dot product with the (tied) item embeddings.

Training: each training sequence (the split's training example: history + target, so no
validation or test target is ever seen) predicts item t+1 from items <= t at every position;
the loss is the mean cross-entropy over real positions, computed only there (hidden states are
gathered before the item matrix, as in :mod:`glossrec.train`). Early stopping keeps the epoch
with the best validation NDCG@10 (validation users' second-to-last item, history kept).

Items that never occur in training have untrained embeddings: they are not scored (-inf), so
the text paths of a hybrid carry new items (:mod:`glossrec.baselines.hybrid`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glossrec.config import SASRecConfig
from glossrec.baselines.base import META_FILE
from glossrec.io import atomic_write, read_json, write_json

log = logging.getLogger(__name__)

WEIGHTS_FILE = "sasrec.safetensors"


def _torch() -> Any:
    import torch

    return torch


def left_pad(seqs: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Token rows [n, length]: each sequence's newest `length` items as positions + 1, left-padded with 0."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for r, s in enumerate(seqs):
        tail = np.asarray(s[-length:], dtype=np.int64) + 1 if len(s) else np.zeros(0, dtype=np.int64)
        if len(tail):
            out[r, length - len(tail):] = tail
    return out


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   pool: int = 50) -> list[np.ndarray]:
    """Row indices of one epoch's batches: shuffled, then sorted by length within pools of
    `pool` batches, so a batch is cut to its longest sequence (left padding: the newest items
    keep their positions). Beauty's mean sequence is 8.9 items against max_len 50: the
    transformer runs on ~5x fewer positions, with batches still drawn at random."""
    order = rng.permutation(len(lengths))
    span = batch_size * pool
    batches: list[np.ndarray] = []
    for s in range(0, len(order), span):
        part = order[s:s + span]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def attention_mask(tokens: Any) -> Any:
    """Boolean [batch, 1, L, L], True where query i may attend key j: j <= i and (key j is a
    real item or j == i). The diagonal keeps every row attendable (no all-masked softmax rows
    at padding), and padding never leaks into a real position."""
    torch = _torch()
    L = tokens.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=tokens.device).tril()
    real_key = (tokens != 0)[:, None, :]  # [b, 1, L]
    eye = torch.eye(L, dtype=torch.bool, device=tokens.device)
    return (causal & (real_key | eye))[:, None]


def _build_model(n_items: int, cfg: SASRecConfig) -> Any:
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.hidden
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.out = nn.Linear(d, d)
            self.ff = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(d, d))
            self.drop = nn.Dropout(cfg.dropout)

        def forward(self, x: Any, mask: Any) -> Any:
            b, L, d = x.shape
            h = cfg.heads
            q, k, v = self.qkv(self.norm1(x)).view(b, L, 3, h, d // h).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=cfg.dropout if self.training else 0.0)
            x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, L, d)))
            return x + self.drop(self.ff(self.norm2(x)))

    class SASRec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.items = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
            self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
            self.drop = nn.Dropout(cfg.dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.blocks))
            self.norm = nn.LayerNorm(cfg.hidden)
            nn.init.normal_(self.items.weight, std=cfg.hidden ** -0.5)
            with torch.no_grad():
                self.items.weight[0].zero_()

        def hidden(self, tokens: Any) -> Any:
            """[b, L] tokens -> [b, L, d] outputs (position i has seen tokens <= i only)."""
            L = tokens.shape[1]
            x = self.items(tokens) * math.sqrt(cfg.hidden) + self.pos.weight[-L:]
            x = self.drop(x) * (tokens != 0)[..., None]
            mask = attention_mask(tokens)
            for blk in self.blocks:
                x = blk(x, mask)
            return self.norm(x)

        def logits(self, h: Any) -> Any:
            """[..., d] -> [..., n_items] scores of catalog positions 0..n_items-1."""
            return h @ self.items.weight[1:].T

    return SASRec()


@dataclass
class FitLog:
    epochs: int = 0
    best_epoch: int = 0
    best_valid: float = -1.0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


class SASRecModel:
    """A trained SASRec over catalog positions 0..n_items-1: :meth:`fit`, :meth:`score`,
    :meth:`save` / :meth:`load`."""

    kind = "sasrec"

    def __init__(self, n_items: int, cfg: SASRecConfig | None = None) -> None:
        torch = _torch()
        self.cfg = cfg or SASRecConfig()
        self.n_items = n_items
        torch.manual_seed(self.cfg.seed)
        self.net = _build_model(n_items, self.cfg)
        self.seen = np.zeros(n_items, dtype=bool)
        """Items that occur in training: only these are scored."""
        self.log = FitLog()

    # ---- training -----------------------------------------------------------------------------

    def fit(self, train_seqs: Sequence[Sequence[int]],
            valid: Sequence[tuple[Sequence[int], int]] = ()) -> FitLog:
        """Train on `train_seqs` (catalog positions, oldest first), early-stopped on `valid`
        (history, target) pairs by NDCG@10; the best epoch's weights are kept."""
        torch = _torch()
        cfg = self.cfg
        seqs = [s for s in train_seqs if len(s) >= 2]
        for s in seqs:
            self.seen[np.asarray(s, dtype=np.int64)] = True
        rows = left_pad(seqs, cfg.max_len + 1)  # inputs [:, :-1] predict targets [:, 1:]
        lengths = np.minimum([len(s) for s in seqs], cfg.max_len + 1)
        rng = np.random.default_rng(cfg.seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate,
                               weight_decay=cfg.weight_decay)
        best_state: dict[str, Any] | None = None
        bad = 0
        t0 = time.perf_counter()
        for epoch in range(1, cfg.epochs + 1):
            self.net.train()
            total, count = 0.0, 0
            for idx in length_batches(lengths, cfg.batch_size, rng):
                batch = torch.from_numpy(rows[idx, -int(lengths[idx].max()):])
                inputs, targets = batch[:, :-1], batch[:, 1:]
                real = (targets != 0) & (inputs != 0)
                h = self.net.hidden(inputs)[real]  # only positions with a next item
                loss = torch.nn.functional.cross_entropy(self.net.logits(h), targets[real] - 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    self.net.items.weight[0].zero_()
                total += float(loss.detach()) * int(real.sum())
                count += int(real.sum())
            rec: dict[str, float] = {"epoch": epoch, "loss": total / max(count, 1),
                                     "seconds": round(time.perf_counter() - t0, 1)}
            if valid:
                rec["valid_ndcg@10"] = self._valid_ndcg(valid)
            self.log.history.append(rec)
            log.info("sasrec epoch %d: %s", epoch, json.dumps(rec))
            if not valid:
                continue
            if rec["valid_ndcg@10"] > self.log.best_valid:
                self.log.best_valid, self.log.best_epoch, bad = rec["valid_ndcg@10"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.log.epochs = len(self.log.history)
        self.log.seconds = round(time.perf_counter() - t0, 1)
        self.net.eval()
        return self.log

    def _valid_ndcg(self, valid: Sequence[tuple[Sequence[int], int]]) -> float:
        from glossrec.evaluate import ndcg_at, target_ranks
        from glossrec.retrieve.base import topk

        ranked = np.concatenate([topk(self.score([h for h, _ in valid[s:s + 1024]]), 10)[0]
                                 for s in range(0, len(valid), 1024)])
        return float(ndcg_at(target_ranks(ranked, np.array([t for _, t in valid])), 10).mean())

    # ---- scoring ------------------------------------------------------------------------------

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 [n, n_items]: each history's score of every item; -inf for items never seen
        in training and for an empty history."""
        torch = _torch()
        out = np.full((len(histories), self.n_items), -np.inf, dtype=np.float32)
        if not len(histories):
            return out
        was_training = self.net.training
        self.net.eval()
        tokens = torch.from_numpy(left_pad(histories, self.cfg.max_len))
        with torch.no_grad():
            block = self.net.logits(self.net.hidden(tokens)[:, -1]).float().numpy()
        self.net.train(was_training)
        nonempty = np.array([len(h) > 0 for h in histories])
        out[nonempty] = np.where(self.seen, block[nonempty], -np.inf)
        return out

    # ---- persistence --------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """sasrec.safetensors (weights) and baseline.json (config, seen items, training log),
        each written atomically."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.net.state_dict().items()}
        with atomic_write(folder / WEIGHTS_FILE, "wb") as f:
            f.write(save(state))
        write_json(folder / META_FILE, {
            "kind": self.kind, "n_items": self.n_items, "config": self.cfg.model_dump(),
            "seen": np.flatnonzero(self.seen).tolist(), "log": self.log.__dict__})

    @classmethod
    def load(cls, folder: Path) -> SASRecModel:
        from safetensors.torch import load_file

        meta = read_json(Path(folder) / META_FILE)
        model = cls(meta["n_items"], SASRecConfig(**meta["config"]))
        model.net.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
        model.net.eval()
        model.seen[np.asarray(meta["seen"], dtype=np.int64)] = True
        model.log = FitLog(**meta["log"])
        return model
