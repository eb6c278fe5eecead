r"""DKD (Zhao et al., CVPR 2022), ImageNet, ResNet-34 -> ResNet-18, mdistiller's recipe.

  python -m kdjax.main --config=configs/dkd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir or export folder

Hardware: 8 GPUs or a TPU pod slice (global batch 512, lr 0.2 scaled with the batch, 100 epochs).
`:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir).
Loss: CE + DKD(alpha=1, beta=0.5, T=1), no warm-up (mdistiller `configs/imagenet/r34_r18/dkd.yaml`;
docs/methods.md#dkd). Expected top-1: 71.70 (mdistiller README). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.dkd = dict(weight=1.0, alpha=1.0, beta=0.5, temperature=1.0)
  return config_base.lock_config(c)
