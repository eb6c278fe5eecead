r"""SKD, spherical knowledge distillation (PaddleClas), ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/skd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34

Hardware: 8 GPUs or a TPU pod slice. `:smoke`: 4 steps at 64x64 on a CPU.
Loss: SKD(T=1, multiplier=2, alpha=0.9) with weight 1 and no separate CE: SKD's
(1 - alpha) * CE on the normalised logits is its label term (PaddleClas
`resnet34_distill_resnet18_skd.yaml`; docs/methods.md#skd). The official script decays alpha by
epoch; `--config.losses.skd.alpha` sets the constant PaddleClas value.
Expected top-1: not checked here; see PaddleClas' distillation docs.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.skd = dict(weight=1.0, temperature=1.0, multiplier=2.0, alpha=0.9)
  return config_base.lock_config(c)
