"""The evidence bank of one run (`<run>/evidence.safetensors`, beside `results.csv`): what each evaluated sampler
setting leaves per sample, so the analysis can say how sure a ranking is (a paired bootstrap over prompts and seeds)
long after the samples are gone.

Per (weights, steps, cfg): every sample's evaluator image features (fp16), its CLIP similarity to its prompt (fp32),
its prompt's index and its noise seed; once per run: the reference images' features (fp16) and the held-out real
images' evidence (`real`: their features and similarity to their own captions; the "real images" row, which the
post-hoc EMA choice recomputes on the reporting half; absent in banks written before it was kept). The file names the
evaluator that computed it and the checkpoint step it evaluated; it is rewritten atomically after every setting, so
a pre-empted evaluation keeps its finished settings, and a bank of another evaluator or checkpoint is not this
evaluation's. Size per run: (settings x n_samples + real images) x (2 d + 20) bytes, plus 2 d per reference image.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load, save

from rfsweep.atomic import atomic_write
from rfsweep.errors import ResultsError

BANK_FILE = "evidence.safetensors"
FORMAT = "rfsweep-evidence-1"
EVIDENCE = ("features", "similarity", "prompt", "noise_seed")  # a SampleEvidence's tensors, in its order


def setting_key(weights: str, steps, cfg) -> tuple[str, int, float]:
    """A setting as results rows and the evaluation match it (cfg to 1e-6)."""
    return str(weights), int(steps), round(float(cfg), 6)


@dataclass
class SampleEvidence:
    """One setting's samples, in sample order."""

    features: torch.Tensor  # (N, d) fp16: the evaluator's unit image features
    similarity: torch.Tensor  # (N,) fp32: cosine of each image with its prompt's text features
    prompt: torch.Tensor  # (N,) int64: the prompt's index among the held-out captions
    noise_seed: torch.Tensor  # (N,) int64: the seed its initial noise was drawn from

    def __post_init__(self):
        n = len(self.features)
        if not (len(self.similarity) == len(self.prompt) == len(self.noise_seed) == n):
            raise ValueError(f"sample evidence of unequal lengths: {n}, {len(self.similarity)}, {len(self.prompt)}, "
                             f"{len(self.noise_seed)}")


def sample_evidence(image_features, text_features, n_prompts: int, seeds: list[int]) -> SampleEvidence:
    """What the bank keeps of one setting: fp16 features, each sample's cosine with its prompt, the prompt's index
    (samples cycle the prompts) and the noise seed."""
    i = torch.nn.functional.normalize(image_features.double(), dim=-1)
    t = torch.nn.functional.normalize(text_features.double().cpu(), dim=-1)
    n = len(i)
    return SampleEvidence(image_features.to(torch.float16), (i * t).sum(-1).float(),
                          torch.arange(n, dtype=torch.int64) % n_prompts, torch.tensor(seeds, dtype=torch.int64))


@dataclass
class EvidenceBank:
    evaluator_id: str
    ckpt_step: int
    reference: torch.Tensor  # (M, d) fp16: the reference images' features
    settings: dict  # setting_key -> SampleEvidence
    real: SampleEvidence | None = None  # the held-out real images (prompt: the image's index, noise seed -1)

    def add(self, weights: str, steps, cfg, evidence: SampleEvidence) -> None:
        self.settings[setting_key(weights, steps, cfg)] = evidence

    def has(self, weights: str, steps, cfg) -> bool:
        return setting_key(weights, steps, cfg) in self.settings

    def save(self, path: str | Path) -> None:
        """Atomically: a reader sees the previous bank or this one, never half of one."""
        tensors, keys = {"reference": self.reference.to(torch.float16).contiguous()}, []
        for i, (key, e) in enumerate(sorted(self.settings.items())):
            keys.append(list(key))
            tensors.update(_stored(f"s{i}", e))
        if self.real is not None:
            tensors.update(_stored("real", self.real))
        meta = {"format": FORMAT, "evaluator_id": self.evaluator_id, "ckpt_step": str(int(self.ckpt_step)),
                "settings": json.dumps(keys)}
        with atomic_write(Path(path), "wb") as f:
            f.write(save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> EvidenceBank | None:
        """The bank at `path`, None when there is none; a damaged file is a ResultsError naming it."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            raw = path.read_bytes()
            tensors, meta = load(raw), _metadata(raw)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            settings = {}
            for i, key in enumerate(json.loads(meta["settings"])):
                settings[setting_key(*key)] = SampleEvidence(*(tensors[f"s{i}.{k}"] for k in EVIDENCE))
            real = SampleEvidence(*(tensors[f"real.{k}"] for k in EVIDENCE)) if "real.features" in tensors else None
            return cls(meta["evaluator_id"], int(meta["ckpt_step"]), tensors["reference"], settings, real)
        except Exception as e:
            raise ResultsError(f"{path}: not a readable evidence bank ({type(e).__name__}: {e}) (allowed: a file "
                               f"written by rfsweep's evaluation; remove it and rerun with stage=evaluate)") from None


def _stored(prefix: str, e: SampleEvidence) -> dict[str, torch.Tensor]:
    """A SampleEvidence's tensors as the file keeps them, under `prefix`: fp16 features, fp32 similarity, int64
    indices."""
    dtypes = (torch.float16, torch.float32, torch.int64, torch.int64)
    return {f"{prefix}.{k}": getattr(e, k).to(t).contiguous() for k, t in zip(EVIDENCE, dtypes)}


def _metadata(raw: bytes) -> dict:
    """The `__metadata__` of a safetensors file's bytes (its header: an 8-byte little-endian length, then JSON), which
    `safetensors.torch.load` drops; read from the same bytes, not the file a second time."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]).get("__metadata__") or {}


def bank_complete(path: str | Path, expected: list[tuple], evaluator_id: str) -> bool:
    """The bank at `path` holds every (weights, steps, cfg) of `expected`, computed by `evaluator_id` (a missing or
    damaged bank is not complete: the run is evaluated again, never trained again)."""
    try:
        bank = EvidenceBank.load(path)
    except ResultsError:
        return False
    return bank is not None and bank.evaluator_id == evaluator_id and all(bank.has(*k) for k in expected)


def bank_size(settings: int, n_samples: int, dim: int, n_reference: int, n_real: int = 0) -> int:
    """Bytes of a bank: fp16 features, fp32 similarity and two int64 indices per sample and per real image, fp16
    reference features."""
    return (settings * n_samples + n_real) * (2 * dim + 4 + 8 + 8) + 2 * dim * n_reference
