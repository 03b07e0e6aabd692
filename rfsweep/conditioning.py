"""The conditioner: captions to `Cond(context, pooled)` in SD3's layout (Sec. 4 of the paper).

- "clip" encoders: token states concatenated channel-wise (77 x (768 + 1280) in SD3), pooled outputs
  concatenated into `c_vec` (768 + 1280 = 2048);
- "t5" encoders: token states appended along the sequence;
- everything zero-padded to one channel width `context_dim` (4096 in SD3: 154 x 4096 context).

Each encoder's output is independently replaced by zeros with probability `drop_prob` (paper: 46.4%, so
about 10% of samples are fully unconditional); all-zero conditioning is the unconditional branch that
classifier-free guidance uses. Dropping acts on per-encoder parts, so the same code serves captions
encoded online and parts read pre-encoded from disk.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from torch import nn

from rfsweep.atomic import atomic_write
from rfsweep.types import Cond

Part = tuple[torch.Tensor, torch.Tensor]  # (tokens (B, L_i, D_i), pooled (B, P_i)) of one encoder


class Conditioner(nn.Module):
    def __init__(self, encoders: list[nn.Module], drop_prob: float = 0.464, cache: bool = True):
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError(f"conditioning.drop_prob={drop_prob} is out of range (allowed: 0 <= p <= 1)")
        self.encoders = nn.ModuleList(encoders)
        self.drop_prob = drop_prob
        clip = [e for e in encoders if e.kind == "clip"]
        t5 = [e for e in encoders if e.kind == "t5"]
        if len({e.max_length for e in clip}) > 1:
            raise ValueError("conditioning.encoders: all 'clip' encoders need one max_length")
        self.context_dim = max([sum(e.width for e in clip)] + [e.width for e in t5])
        self.pooled_dim = sum(e.pooled_width for e in clip)
        self.clip_tokens = clip[0].max_length if clip else 0
        self.context_len = self.clip_tokens + sum(e.max_length for e in t5)
        self._cache: dict[str, list[Part]] | None = {} if cache else None
        self._table: list[Part] | None = None

    def encode(self, captions: list[str]) -> list[Part]:
        """Per-encoder parts for a list of captions; memoised per caption when `cache` is on."""
        if self._cache is None:
            return [enc(captions) for enc in self.encoders]
        self._memoise(captions)
        if self._table is None:  # one stacked table per encoder, so a batch is a single gather
            names = list(self._cache)
            self._row = {c: i for i, c in enumerate(names)}
            self._table = [(torch.stack([self._cache[c][k][0] for c in names]),
                            torch.stack([self._cache[c][k][1] for c in names])) for k in range(len(self.encoders))]
        device = self.device
        if self._table[0][0].device != device:  # the conditioner was moved (e.g. to the GPU) after warming
            self._table = [(t.to(device), p.to(device)) for t, p in self._table]
        idx = torch.tensor([self._row[c] for c in captions], device=device)
        return [(t.index_select(0, idx), p.index_select(0, idx)) for t, p in self._table]

    def _memoise(self, captions: list[str]) -> None:
        """Encode the captions not in the memo yet (one batch) and invalidate the stacked table."""
        todo = sorted({c for c in captions if c not in self._cache})
        if todo:
            outs = [enc(todo) for enc in self.encoders]
            for j, c in enumerate(todo):
                self._cache[c] = [(t[j], p[j]) for t, p in outs]
            self._table = None

    @property
    def device(self) -> torch.device:
        """Where the encoders live (their first parameter or buffer)."""
        first = next(itertools.chain(self.parameters(), self.buffers()), None)
        return torch.device("cpu") if first is None else first.device

    def warm(self, captions: list[str], cache_file: str | Path | None = None, batch_size: int = 256) -> None:
        """Fill the memo for a known caption vocabulary (the embedded datasets have a few hundred),
        loading it from / saving it to `cache_file` so that the jobs of a sweep encode it once."""
        if self._cache is None:
            return
        todo = sorted(set(captions) - set(self._cache))
        if cache_file is not None and Path(cache_file).is_file():
            try:
                stored = torch.load(cache_file, weights_only=True)
                self._cache.update({c: [tuple(p) for p in parts] for c, parts in stored.items()})
                self._table = None
                todo = [c for c in todo if c not in self._cache]
            except Exception:  # a corrupt cache is only a cache: recompute and overwrite it
                pass
        if not todo:
            return
        for i in range(0, len(todo), batch_size):
            self._memoise(todo[i : i + batch_size])
        if cache_file is not None:
            with atomic_write(cache_file) as f:
                torch.save({c: [tuple(t.cpu() for t in p) for p in self._cache[c]] for c in set(captions)}, f)

    def drop_mask(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(B, n_encoders) boolean: True where that encoder's output is kept."""
        u = torch.rand(batch, len(self.encoders), generator=generator, device=generator.device if generator else None)
        return (u >= self.drop_prob).to(device)

    def assemble(self, parts: list[Part], keep: torch.Tensor | None = None) -> Cond:
        """Lay per-encoder parts out as SD3 does; `keep` (B, n_encoders) zeroes dropped encoders."""
        clip_t, clip_p, t5_t = [], [], []
        for i, (enc, (tok, pool)) in enumerate(zip(self.encoders, parts)):
            if keep is not None:
                k = keep[:, i].to(tok.dtype)
                tok, pool = tok * k[:, None, None], pool * k[:, None]
            (clip_t if enc.kind == "clip" else t5_t).append(tok)
            if enc.kind == "clip":
                clip_p.append(pool)
        seqs = ([torch.cat(clip_t, dim=-1)] if clip_t else []) + t5_t
        seqs = [nn.functional.pad(s, (0, self.context_dim - s.shape[-1])) for s in seqs]
        context = torch.cat(seqs, dim=1)  # (B, L, context_dim)
        pooled = torch.cat(clip_p, dim=-1) if clip_p else context.new_zeros(context.shape[0], 0)
        return Cond(context, pooled)

    def forward(self, captions: list[str], drop: bool = False, generator: torch.Generator | None = None) -> Cond:
        parts = self.encode(captions)
        keep = self.drop_mask(len(captions), generator, parts[0][0].device) if drop else None
        return self.assemble(parts, keep)

    def unconditional(self, batch: int, device=None) -> Cond:
        """The all-dropped conditioning: zeros shaped like a real one."""
        z = torch.zeros(batch, self.context_len, self.context_dim, device=device)
        return Cond(z, torch.zeros(batch, self.pooled_dim, device=device))
