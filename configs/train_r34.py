r"""Plain supervised ResNet-34 on ImageNet: a teacher for the *_r34_r18 recipes.

  python -m kdjax.main --config=configs/train_r34.py --workdir=/path/to/resnet34

Hardware: 8 GPUs or a TPU pod slice (global batch 512, lr 0.2 scaled with the batch, 100
epochs). `:smoke`: 4 steps at 64x64 on a CPU. Most users load torchvision's pretrained weights
instead (73.31 top-1, torchvision's model card for ResNet34_Weights.IMAGENET1K_V1).
Expected top-1: about 73 (torchvision's recipe is 90 epochs with the same decays). Not yet
reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.imagenet(arg)
  c.student.model = 'resnet34'
  c.teacher.model = ''
  c.losses.ce = dict(weight=1.0)
  return config_base.lock_config(c)
