r"""KD (Hinton et al. 2015), ImageNet, ResNet-34 -> ResNet-18, mdistiller's recipe.

  python -m kdjax.main --config=configs/kd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir or export folder

Hardware: 8 GPUs or a TPU pod slice (global batch 512, 100 epochs). `:smoke`: 4 steps at
64x64 on a CPU (needs imagenet2012 in data_dir; only smoke may use a random teacher).
Loss: 0.5 * CE + 0.5 * KD(T=1) (mdistiller `configs/imagenet/r34_r18/kd.yaml`, docs/methods.md#kd).
Expected top-1: 71.03 (mdistiller README, ResNet-34 -> ResNet-18). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=0.5)
  c.losses.kd = dict(weight=0.5, temperature=1.0)
  return config_base.lock_config(c)
