r"""AT, attention transfer, on layer1..layer4; ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/at_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir, export, or .safetensors

Hardware: 8 GPUs or a TPU pod slice (mdistiller's ImageNet schedule, global batch 512).
`:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir).
Loss: CE + 1000 * sum of AT(p=2) over the four stages (mdistiller
`configs/imagenet/r34_r18/at.yaml`; docs/methods.md#at).
Expected top-1: not checked here (mdistiller reports AT for this pair in its ImageNet table).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.at = dict(weight=1000.0, p=2.0, taps=('layer1', 'layer2', 'layer3', 'layer4'))
  return config_base.lock_config(c)
