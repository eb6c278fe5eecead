r"""KD + DOT (Zhao et al., ICCV 2023), ImageNet, ResNet-34 -> ResNet-18, mdistiller's recipe.

  python -m kdjax.main --config=configs/dot_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir or export folder

Hardware: 8 GPUs or a TPU pod slice (global batch 512, lr 0.2 scaled with the batch, 100
epochs, x0.1 at 30/60/90, weight decay 1e-4). `:smoke`: 4 steps at 64x64 on a CPU (needs
imagenet2012 in data_dir).
Loss: 0.5 * CE + 0.5 * KD(T=1), as configs/kd_r34_r18.py; the optimizer is DOT: momentum
0.9 - 0.09 for the CE gradient, 0.9 + 0.09 for the KD gradient (mdistiller
`configs/imagenet/r34_r18/dot.yaml`, TRAINER dot, DOT.DELTA 0.09; docs/methods.md#dot).
Expected top-1: 71.72 (mdistiller README, KD+DOT, ResNet34 -> ResNet18; KD alone 71.03).
Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.optimizer.update(name='dot', dot_delta=0.09)
  c.losses.ce = dict(weight=0.5)
  c.losses.kd = dict(weight=0.5, temperature=1.0)
  return config_base.lock_config(c)
