r"""DIST (Huang et al., NeurIPS 2022), ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/dist_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34

Hardware: 8 GPUs or a TPU pod slice. `:smoke`: 4 steps at 64x64 on a CPU.
Loss: CE + 2 * DIST(beta=1, gamma=1, T=1), the intra-class term over groups of 32 examples, the
reference's per-GPU batch (hunto `configs/strategies/distill/resnet_dist.yaml`;
docs/methods.md#dist). Base schedule: mdistiller's ImageNet recipe (the DIST repository trains
with its own schedule; see its README). Expected top-1: not checked here; see the DIST paper's
ImageNet table.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, arg = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.dist = dict(weight=2.0, beta=1.0, gamma=1.0, temperature=1.0,
                       group_size=8 if arg == 'smoke' else 32)
  return config_base.lock_config(c)
