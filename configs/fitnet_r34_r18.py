r"""FitNet: layer2 hint through a trainable ConvReg regressor; ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/fitnet_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir, export, or .safetensors

Hardware: 8 GPUs or a TPU pod slice (mdistiller's ImageNet schedule, global batch 512).
`:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir).
Loss: CE + 100 * MSE at layer2; tap and weight are kdjax choices with no reference ImageNet config
(docs/methods.md#fitnet), to be tuned.
Expected top-1: none published for this setting.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.losses.ce = dict(weight=1.0)
  c.losses.fitnet = dict(weight=100.0, student_tap='layer2', teacher_tap='layer2')
  return config_base.lock_config(c)
