"""Evaluators: image and text encoders whose normalised embeddings give the CLIP score and the FID.

Contract: `encode_images(images (B, 3, H, W) in [-1, 1]) -> (B, d)` and `encode_texts(list[str]) -> (B, d)`,
both L2-normalised; `dim` = d; `id` names model and weights (the reference-statistics cache key).
`OpenCLIPEvaluator` is the paper's CLIP-L/14 (Sec. 5.1); `EmbeddedCLIP` a tiny CLIP trained on the
embedded data sets and shipped in `rfsweep/assets`, for runs where CLIP-L/14 is unavailable or pointless.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rfsweep.errors import ConfigError, EvaluatorUnavailable  # noqa: F401 (raised here, defined in the one home of user errors)
from rfsweep.evaluation.clip_model import WordTokenizer, build_model

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_WEIGHTS = ASSETS / "embedded_clip.safetensors"


def embedded_id(weights: str | Path = EMBEDDED_WEIGHTS, **_) -> str:
    """The embedded CLIP's id: its weights' digest (a retrained evaluator is another evaluator)."""
    path = Path(weights)
    if not path.is_file():
        raise EvaluatorUnavailable(f"eval.evaluator_args.weights={str(path)!r}: no such file (allowed: the shipped "
                                   f"{EMBEDDED_WEIGHTS.name}, or weights written by make train-clip)")
    return f"embedded_clip:{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def openclip_id(model_name: str = "ViT-L-14", pretrained: str | None = "openai", **_) -> str:
    return f"open_clip:{model_name}:{Path(pretrained).name if pretrained else 'random'}"


class Evaluator:
    id: str
    dim: int
    batch_size: int = 256

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def to(self, device: str | torch.device) -> Evaluator:
        """Move the model and its tensors (built on the CPU before training, moved for evaluation)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(self.device))
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, d) unit rows, float32 on the images' device."""
        out = [self.model.encode_image(self.preprocess(x.to(self.device).float()), normalize=True).float()
               for x in images.split(self.batch_size)]
        return torch.cat(out).to(images.device)

    @torch.no_grad()
    def encode_texts(self, captions: list[str]) -> torch.Tensor:
        """list of B captions -> (B, d) unit rows, float32 on CPU."""
        out = [self.model.encode_text(self.tokenize(captions[i : i + self.batch_size]).to(self.device),
                                      normalize=True).float().cpu()
               for i in range(0, len(captions), self.batch_size)]
        return torch.cat(out)


def _cached_checkpoint(model_name: str, pretrained: str, cache_dir: str | None) -> str | None:
    """Local path of the tag's weights if already in the Hugging Face cache, else None.

    Never touches the network: open_clip's own resolution calls `hf_hub_download`, which retries and
    waits when offline, so the cache is probed here and open_clip is handed a file path.
    """
    import open_clip  # deferred: open_clip (seconds), only the openclip evaluator
    from huggingface_hub import try_to_load_from_cache  # deferred with open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    repo, filename = os.path.split(cfg.get("hf_hub", ""))  # "org/name/" means the default file names
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names if repo else []:
        path = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(path, str):
            return path
    return None


class OpenCLIPEvaluator(Evaluator):
    """An open_clip model, by default the paper's CLIP-L/14 with OpenAI weights (Sec. 5.1).

    `pretrained`: an open_clip tag (looked up in the local cache only), a checkpoint path, or None for
    random weights (tests). Images are resized bicubically to the model's input size and normalised with
    the weights' mean/std.
    """

    def __init__(self, model_name: str = "ViT-L-14", pretrained: str | None = "openai",
                 device: str | torch.device = "cpu", cache_dir: str | None = None):
        import open_clip  # deferred: open_clip (seconds), and most jobs never use it

        kwargs, ident = {}, openclip_id(model_name, pretrained)  # before `pretrained` becomes the cached file
        if pretrained and open_clip.get_pretrained_cfg(model_name, pretrained):
            cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
            path = _cached_checkpoint(model_name, pretrained, cache_dir)
            if path is None:
                raise EvaluatorUnavailable(
                    f"open_clip weights {model_name}/{pretrained} are not in the Hugging Face cache and rfsweep "
                    f"does not download them: fetch them once online (python -c \"import open_clip; open_clip."
                    f"create_model('{model_name}', pretrained='{pretrained}')\") or set eval.evaluator=embedded")
            kwargs = {"force_quick_gelu": cfg.get("quick_gelu", False), "image_mean": cfg.get("mean"),
                      "image_std": cfg.get("std")}
            pretrained = path
        elif pretrained and not Path(pretrained).is_file():
            raise EvaluatorUnavailable(f"{model_name}: pretrained={pretrained!r} is neither an open_clip tag nor a "
                                       f"file")
        model, _, val = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, **kwargs)
        super().__init__(model, device)
        norm = next(t for t in val.transforms if type(t).__name__ == "Normalize")
        self.mean = torch.tensor(norm.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm.std, device=self.device).view(1, 3, 1, 1)
        size = model.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.dim = self.encode_texts([""]).shape[1]
        self.id = ident

    def preprocess(self, images):
        x = F.interpolate(images, size=self.size, mode="bicubic", align_corners=False).add(1).div(2)
        return (x.clamp(0, 1) - self.mean) / self.std

    def tokenize(self, captions):
        return self.tokenizer(captions)


class EmbeddedCLIP(Evaluator):
    """The tiny CLIP shipped in `rfsweep/assets` (trained by `python -m rfsweep.cli.train_clip`).

    Images of any resolution are resized to 8x8 by area averaging (exact 2x2 box filtering for 16x16
    shapes, matching how the data set renders them) and fed in [-1, 1] unnormalised, as in training.
    """

    def __init__(self, model, config: dict, vocab: list[str], device="cpu", id: str = "embedded_clip:untrained"):
        super().__init__(model, device)
        self.config, self.vocab, self.id = config, vocab, id
        self.size = config["image_size"]
        self.dim = config["embed_dim"]
        self.tokenizer = WordTokenizer(vocab, config["text_cfg"]["context_length"])

    @classmethod
    def load(cls, weights: str | Path = EMBEDDED_WEIGHTS, config: str | Path | None = None, device="cpu"):
        weights = Path(weights)
        digest = embedded_id(weights)
        meta = json.loads(Path(config or weights.with_suffix(".json")).read_text())
        model = build_model(meta["config"], len(meta["vocab"]))
        model.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
        return cls(model, meta["config"], meta["vocab"], device, id=digest)

    def preprocess(self, images):
        if images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="area")
        return images

    def tokenize(self, captions):
        return self.tokenizer(captions)


def _kind(name: str):
    """`eval.evaluator`'s (builder, id) pair: "embedded" (the shipped tiny CLIP) or "openclip" (default ViT-L-14 /
    openai); the id function takes the builder's arguments and ignores those the id does not depend on."""
    kinds = {"embedded": (EmbeddedCLIP.load, embedded_id), "openclip": (OpenCLIPEvaluator, openclip_id)}
    if name not in kinds:
        raise ConfigError(f"config error: eval.evaluator={name!r} is unknown (allowed: {', '.join(kinds)})")
    return kinds[name]


def build_evaluator(name: str = "embedded", device="cpu", **kwargs) -> Evaluator:
    """The evaluator `eval.evaluator` names, built with `eval.evaluator_args`."""
    return _kind(name)[0](device=device, **kwargs)


def evaluator_id(name: str = "embedded", **kwargs) -> str:
    """The id `build_evaluator(name, **kwargs)` would have, without loading a model (a run's results are its
    evaluator's: `rfsweep.results` rows carry it)."""
    return _kind(name)[1](**kwargs)
