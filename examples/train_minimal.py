"""Train a tiny text-to-image model with the rfsweep library alone: no Hydra, no Lightning, one plain PyTorch loop.

The paper's best formulation, rf/lognorm(0.00, 1.00), trains the demo MLP denoiser on the embedded `shapes` set
(8x8 images captioned like "a red circle left of a blue square"), conditioned by the weight-free hash text
encoder; the study's Euler sampler then draws one sample per test caption, with classifier-free guidance.

    python examples/train_minimal.py --out samples.png [--steps 2000] [--seed 0] [--variant "rf/mode(1.29)"]
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from rfsweep.backbones import build_backbone
from rfsweep.conditioning import Conditioner
from rfsweep.data import build_dataset
from rfsweep.formulations import build_formulation
from rfsweep.sampling import sample
from rfsweep.text_encoders import HashTextEncoder

parser = argparse.ArgumentParser(description="Train a tiny rfsweep model on the CPU and save a grid of samples.")
parser.add_argument("--out", default="samples.png", help="where to write the PNG grid of samples")
parser.add_argument("--steps", type=int, default=2000, help="training steps (batch 64)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--variant", default="rf/lognorm(0.00, 1.00)", help="any of the 61 formulation names")
args = parser.parse_args()
torch.set_num_threads(1)  # tiny matrices: one thread is fastest (several contend) and gives the same bits everywhere
torch.manual_seed(args.seed)  # the network's initial weights
gen = torch.Generator().manual_seed(args.seed)  # every draw of training and sampling: batches, drops, t, noise

# The embedded default data set, all in memory: images (N, 3, 8, 8) in [-1, 1] and one caption each.
train = build_dataset("shapes", "train", resolution=8)
images = torch.stack([train[i]["image"] for i in range(len(train))])
captions = [train[i]["caption"] for i in range(len(train))]

formulation = build_formulation(args.variant)
# Each caption's encoding is zeroed with probability 0.464 (the paper's): the unconditional branch of the guidance.
conditioner = Conditioner([HashTextEncoder(width=64, max_length=16)], drop_prob=0.464)
net = build_backbone("mlp", in_channels=3, context_dim=conditioner.context_dim, pooled_dim=conditioner.pooled_dim,
                     input_size=8, skip=True)
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)

every, running = max(1, args.steps // 10), []
for step in range(1, args.steps + 1):
    idx = torch.randint(len(images), (64,), generator=gen)
    cond = conditioner([captions[i] for i in idx], drop=True, generator=gen)
    loss = formulation.loss(net, images[idx], cond, generator=gen).mean()  # t ~ the variant's density, eps ~ N(0, I)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    running.append(loss.item())
    if step % every == 0 or step == args.steps:
        print(f"step {step:5d} | loss {sum(running) / len(running):.4f}", flush=True)  # mean since the last print
        running = []

# Sample: Euler in the rectified-flow frame (the formulation turns the network output into a velocity).
net.eval()
prompts = build_dataset("shapes", "test", resolution=8).captions()[:32]
noise = torch.randn(len(prompts), 3, 8, 8, generator=gen)
x = sample(formulation, net, noise, conditioner(prompts), conditioner.unconditional(len(prompts)), steps=25,
           guidance=5.0)
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
# 4 rows of 8, each 8x8 sample shown at 32x32 (nearest neighbour), [-1, 1] -> [0, 1].
save_image(F.interpolate(x.clamp(-1, 1), scale_factor=4) * 0.5 + 0.5, args.out, nrow=8)
print("prompts:", "; ".join(prompts[:8]), "...")
print(f"saved {len(prompts)} samples to {args.out}")
