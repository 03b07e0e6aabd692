"""Forward + backward time of each SDPA kernel at MM-DiT's attention shape, in rfsweep's (N, L, H, Dh)
layout. Default: the d=24 GPU anchor (batch 64, 256 image + 154 text tokens, 24 heads of 64), bf16."""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=410)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args(argv)
    dev = "cuda"
    shape = (a.batch, a.tokens, a.heads, a.head_dim)
    q, k, v = (torch.randn(shape, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q).transpose(1, 2)
    flops = 3 * 4 * a.batch * a.heads * a.tokens**2 * a.head_dim  # fwd + bwd (2x fwd)
    results, ref = {}, None
    for b in [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]:
        try:
            with sdpa_kernel([b]):
                for i in range(3 + a.steps):
                    if i == 3:
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                    out = F.scaled_dot_product_attention(
                        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                    )
                    out.backward(g)
                torch.cuda.synchronize()
        except RuntimeError as e:
            print(f"{b.name}: unavailable ({str(e).splitlines()[0][:80]})")
            continue
        dt = (time.perf_counter() - t0) / a.steps
        ref = out.float() if ref is None else ref
        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
        results[b.name] = dict(ms=dt * 1e3, tflops=flops / dt / 1e12, rel_err_vs_flash=err)
        print(f"{b.name:20s} {dt * 1e3:7.2f} ms fwd+bwd  {flops / dt / 1e12:6.1f} TFLOP/s  rel err {err:.1e}")
    return results


if __name__ == "__main__":
    main()
