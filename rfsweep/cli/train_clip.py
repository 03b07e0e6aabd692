"""Train the embedded evaluator: `python -m rfsweep.cli.train_clip [--out PATH] [--seed 0] [--steps N]`.

A tiny open_clip `CLIP` (see `clip_model.py`) trained contrastively on the train splits of the embedded data sets
(`digits`, `colour_digits`, `shapes`) at 8x8, one data set per batch, in turn. Captions that mean the same within
a batch are all positives (soft targets): identical captions ("a red circle"), and digit captions naming the same
digit by different synonyms ("a photo of a 7", "a photo of a septet"), which no image could tell apart.
Digit images are jittered by up to one pixel (1437 training images overfit otherwise).
Deterministic given the seed on one CPU thread.
Writes PATH (.safetensors, fp16) and PATH with suffix .json ({"config", "vocab", "train"}).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rfsweep.data import EMBEDDED, build_dataset
from rfsweep.data.captions import DIGIT_SYNONYMS, class_caption
from rfsweep.data.shapes import COLOURS, RELATIONS, SHAPES
from rfsweep.evaluation.clip_model import DEFAULT_CONFIG, WordTokenizer, build_model, build_vocab
from rfsweep.evaluation.evaluators import EMBEDDED_WEIGHTS, EmbeddedCLIP

RESOLUTION = 8
SETS = tuple(EMBEDDED)  # what the evaluator is trained on and tested with, in turn
DIGIT_NAME = {s: syn[0] for syn in DIGIT_SYNONYMS for s in syn}  # synonym -> the digit's first name
PREFIX = class_caption("")


def canonical(caption: str) -> str:
    """One caption per meaning: a digit caption with the digit's first name ("a photo of a red septet" -> "a photo
    of a red seven"); any other caption as it is."""
    if not caption.startswith(PREFIX):
        return caption
    rest = caption[len(PREFIX):]
    colour, _, name = rest.partition(" ")
    if colour in COLOURS and name in DIGIT_NAME:
        return class_caption(f"{colour} {DIGIT_NAME[name]}")
    return class_caption(DIGIT_NAME[rest]) if rest in DIGIT_NAME else caption


def jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image of x (B, 3, H, W) by -1, 0 or 1 pixel per axis, filling with background -1."""
    H, W = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(3, (2, len(x)), generator=gen)
    out = torch.empty_like(x)
    for i in range(3):
        for j in range(3):
            m = (dy == i) & (dx == j)
            out[m] = p[m, :, i : i + H, j : j + W]
    return out


def load_split(name: str, split: str, n: int | None = None) -> tuple[torch.Tensor, list[str]]:
    ds = build_dataset(name, split, resolution=RESOLUTION)
    items = [ds[i] for i in range(min(n or len(ds), len(ds)))]
    return torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


def train(steps: int = 2250, seed: int = 0, batch_size: int = 256, lr: float = 2e-3, config=DEFAULT_CONFIG,
          log_every: int = 0, data=None) -> EmbeddedCLIP:
    """data: [(images, captions, jitter?)] per data set, the train splits of `SETS` unless given."""
    data = data or [(*load_split(n, "train"), n != "shapes") for n in SETS]
    vocab = build_vocab(c for _, caps, _ in data for c in caps)
    torch.manual_seed(seed)
    model = build_model(config, len(vocab)).train()
    tok = WordTokenizer(vocab, config["text_cfg"]["context_length"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, cosine decay
        opt, lambda s: min(1, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        images, captions, shift = data[step % len(data)]
        idx = torch.randint(len(captions), (batch_size,), generator=gen)
        caps = [captions[i] for i in idx.tolist()]
        keys = [canonical(c) for c in caps]
        same = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)  # (B, B) symmetric positives
        x = jitter(images[idx], gen) if shift else images[idx]
        img, txt, scale = model(x, tok(caps))
        logits = scale * img @ txt.T
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  scale {scale.item():.1f}", flush=True)
    return EmbeddedCLIP(model.eval(), config, vocab)


def shapes_candidates(caption: str) -> list[str]:
    """The true caption first, then every caption one edit away: another colour or shape for one object,
    the objects swapped, the other relation; single objects compete with all 17 other single objects."""
    m = re.fullmatch(r"a (\w+) (\w+)(?: (left of|above) a (\w+) (\w+))?", caption)
    c1, s1, rel, c2, s2 = m.groups()
    if rel is None:
        return [caption] + [f"a {c} {s}" for c in COLOURS for s in SHAPES if (c, s) != (c1, s1)]

    def two(a, b, r=rel):
        return f"a {a[0]} {a[1]} {r} a {b[0]} {b[1]}"

    o1, o2 = (c1, s1), (c2, s2)
    out = [caption, two(o2, o1), two(o1, o2, next(r for r in RELATIONS if r != rel))]
    out += [two((c, s1), o2) for c in COLOURS if c != c1] + [two(o1, (c, s2)) for c in COLOURS if c != c2]
    out += [two((c1, s), o2) for s in SHAPES if s != s1] + [two(o1, (c2, s)) for s in SHAPES if s != s2]
    return out


@torch.no_grad()
def retrieval_accuracy(evaluator, name: str, split: str = "test") -> float:
    """Fraction of `split` images whose best caption is the true one. digits: among the 10 canonical
    captions "a photo of a <zero..nine>"; colour_digits: among the 60 "a photo of a <colour> <zero..nine>";
    shapes: among `shapes_candidates`."""
    images, captions = load_split(name, split)
    feats = evaluator.encode_images(images)
    if name in ("digits", "colour_digits"):
        colours = [f"{c} " for c in COLOURS] if name == "colour_digits" else [""]
        canon = [class_caption(c + syn[0]) for c in colours for syn in DIGIT_SYNONYMS]
        pred = (feats @ evaluator.encode_texts(canon).T).argmax(1)
        truth = torch.tensor([canon.index(canonical(c)) for c in captions])
        return float((pred == truth).float().mean())
    cands = [shapes_candidates(c) for c in captions]
    unique = sorted({c for cs in cands for c in cs})
    text = dict(zip(unique, evaluator.encode_texts(unique)))
    hits = [int((torch.stack([text[c] for c in cs]) @ f).argmax() == 0) for f, cs in zip(feats, cands)]
    return sum(hits) / len(hits)


def save(evaluator: EmbeddedCLIP, out: Path, train_info: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in evaluator.model.state_dict().items()}
    save_file(state, str(out))
    out.chmod(0o644)
    meta = {"config": evaluator.config, "vocab": evaluator.vocab, "train": train_info}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=EMBEDDED_WEIGHTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2250)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    ev = train(args.steps, args.seed, log_every=250)
    info = {"seed": args.seed, "steps": args.steps, "seconds": round(time.time() - t0, 1)}
    info.update({f"{n}_test_accuracy": retrieval_accuracy(ev, n) for n in SETS})
    save(ev, args.out, info)
    print(json.dumps(info), "->", args.out)


if __name__ == "__main__":
    main()
