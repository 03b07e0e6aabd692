"""Training-step speed of rfsweep's MM-DiT against diffusers' SD3Transformer2DModel, same config, same weights.

One step = forward, MSE loss, backward, AdamW step. Both models run in one process, one after the other
(built, warmed up, timed, freed), for `--rounds` rounds; the best round of each is reported.

Model FLOPs per image: `rfsweep.backbones.flops` (training = 3 x forward; token-wise matmuls and attention).
The same model FLOPs are used for both implementations, so MFU compares like with like. MFU = FLOP/s / peak;
the assumed peak is 989 TFLOP/s (bf16 dense, H100 / H200 SXM), `--peak-tflops` to change it.

CPU (default, tiny):     python benchmarks/bench_backbones.py
GPU anchor (d=24, 256^2): python benchmarks/bench_backbones.py --preset sd3-gpu [--compile]
  (diffusers there: 132 images/s eager, 243 compiled, 43% MFU, measured elsewhere)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from rfsweep.backbones.flops import mmdit_train_flops
from rfsweep.backbones.mmdit import from_diffusers

SDPA = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}

PRESETS = {
    "sd3-gpu": dict(
        depth=24,
        width=None,
        heads=None,
        resolution=256,
        channels=16,
        text_tokens=154,
        batch=64,
        context_dim=4096,
        pooled_dim=2048,
        dtype="bf16",
        device="cuda",
        steps=10,
        warmup=3,
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="overrides the size options below")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--width", type=int, default=64, help="default 64 * depth with --width 0")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--resolution", type=int, default=128, help="image pixels; latent grid = resolution / 8")
    p.add_argument("--channels", type=int, default=4, help="latent channels (16 for the GPU anchor)")
    p.add_argument("--text-tokens", type=int, default=8)
    p.add_argument("--context-dim", type=int, default=64)
    p.add_argument("--pooled-dim", type=int, default=64)
    p.add_argument("--qk-norm", action="store_true")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--compile-scope", choices=["model", "blocks"], default="model",
                   help="with --compile: the whole model, or each transformer block alone with fullgraph=True")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32", help="bf16: autocast, fp32 weights")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--impls", default="diffusers,rfsweep")
    p.add_argument("--sdpa", choices=sorted(SDPA), default="auto",
                   help="restrict scaled_dot_product_attention to one kernel (all impls); auto: torch's choice")
    p.add_argument(
        "--profile", type=int, default=0, help="print the N most costly kernels of 2 profiled steps"
    )
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.preset:
        given = {
            a.dest
            for a in p._actions
            if a.dest in PRESETS[args.preset] and a.default != getattr(args, a.dest)
        }
        for k, v in PRESETS[args.preset].items():
            if k not in given:
                setattr(args, k, v)
    args.width = args.width or 64 * args.depth
    args.heads = args.heads or args.depth
    return args


def diffusers_model(a: argparse.Namespace):
    from diffusers import SD3Transformer2DModel

    grid = a.resolution // 8
    with torch.device(a.device):
        return SD3Transformer2DModel(
            sample_size=grid,
            patch_size=2,
            in_channels=a.channels,
            out_channels=a.channels,
            num_layers=a.depth,
            attention_head_dim=a.width // a.heads,
            num_attention_heads=a.heads,
            joint_attention_dim=a.context_dim,
            caption_projection_dim=a.width,
            pooled_projection_dim=a.pooled_dim,
            pos_embed_max_size=max(96, grid // 2),
            qk_norm="rms_norm" if a.qk_norm else None,
        )


def model_flops_per_image(a: argparse.Namespace, p: int = 2) -> float:
    """Training FLOPs per image (`rfsweep.backbones.flops`)."""
    return mmdit_train_flops(a.depth, a.width, a.channels, p, a.context_dim, (a.resolution // 8 // p) ** 2,
                             a.text_tokens)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compiled(model, a: argparse.Namespace):
    """The callable a step runs: the model, compiled whole (`--compile`), or with each transformer block compiled
    alone with fullgraph=True (`--compile-scope blocks`: one graph per block, no graph break inside it)."""
    if not a.compile:
        return model
    if a.compile_scope == "model":
        return torch.compile(model, mode=a.compile_mode)
    blocks = getattr(model, "blocks", None) or model.transformer_blocks  # rfsweep's, diffusers'
    for block in blocks:
        block.compile(fullgraph=True, mode=a.compile_mode)
    return model


def time_training(name: str, model, a: argparse.Namespace) -> dict:
    dev, amp = a.device, a.dtype == "bf16"
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.startswith("cuda"))
    fn = compiled(model, a)
    grid = a.resolution // 8
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(a.batch, a.channels, grid, grid, device=dev, generator=g)
    target = torch.randn_like(x)
    t = torch.rand(a.batch, device=dev, generator=g)
    ctx = torch.randn(a.batch, a.text_tokens, a.context_dim, device=dev, generator=g)
    pooled = torch.randn(a.batch, a.pooled_dim, device=dev, generator=g)

    def step():
        kernels = sdpa_kernel([SDPA[a.sdpa]]) if SDPA[a.sdpa] else contextlib.nullcontext()
        with kernels, torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            if name == "diffusers":
                out = fn(
                    hidden_states=x,
                    encoder_hidden_states=ctx,
                    pooled_projections=pooled,
                    timestep=1000 * t,
                    return_dict=False,
                )[0]
            else:
                out = fn(x, t, ctx, pooled)
            loss = F.mse_loss(out.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(a.warmup):
        step()
    sync(dev)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync(dev)
    dt = (time.perf_counter() - t0) / a.steps
    if a.profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if dev.startswith("cuda") else []
        )
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(2):
                step()
            sync(dev)
        key = "self_cuda_time_total" if dev.startswith("cuda") else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=a.profile, max_name_column_width=70))
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.startswith("cuda") else None
    return dict(step_s=dt, images_per_s=a.batch / dt, warmup_s=warm_s, max_mem_gib=mem)


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.manual_seed(0)
    flops = model_flops_per_image(a)
    impls = a.impls.split(",")
    best: dict[str, dict] = {}
    for r in range(a.rounds):
        for name in impls:
            dm = diffusers_model(a)
            model = dm if name == "diffusers" else from_diffusers(dm)
            del dm
            if r == 0:
                print(
                    f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True
                )
            res = time_training(name, model, a)
            del model
            gc.collect()
            if a.device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            res["tflops"] = res["images_per_s"] * flops / 1e12
            if a.device.startswith("cuda"):
                res["mfu"] = res["tflops"] / a.peak_tflops
            print(
                f"  round {r} {name:9s} {res['images_per_s']:9.2f} images/s  ({res['step_s'] * 1e3:.1f} ms/step, "
                f"{res['tflops']:.3f} TFLOP/s" + (f", MFU {res['mfu']:.1%}" if "mfu" in res else "") + ")",
                flush=True,
            )
            if name not in best or res["images_per_s"] > best[name]["images_per_s"]:
                best[name] = res
    out = dict(
        config={k: v for k, v in vars(a).items() if k != "json"},
        model_tflop_per_image=flops / 1e12,
        peak_tflops_assumed=a.peak_tflops if a.device.startswith("cuda") else None,
        results=best,
        torch=torch.__version__,
        host=platform.node(),
        gpu=torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
    )
    if {"diffusers", "rfsweep"} <= best.keys():
        out["ratio_rfsweep_over_diffusers"] = (
            best["rfsweep"]["images_per_s"] / best["diffusers"]["images_per_s"]
        )
        print(
            f"rfsweep / diffusers = {out['ratio_rfsweep_over_diffusers']:.3f}x "
            f"(compile={a.compile and a.compile_scope}, dtype={a.dtype}, device={a.device}, sdpa={a.sdpa})"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
