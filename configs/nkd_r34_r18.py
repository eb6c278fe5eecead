r"""NKD (Yang et al., ICCV 2023), ImageNet, ResNet-34 -> ResNet-18, the reference's recipe.

  python -m kdjax.main --config=configs/nkd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir or export folder

Hardware: 8 GPUs x 32 images (global batch 256, SGD lr 0.1 scaled with the batch, momentum 0.9,
weight decay 1e-4, 100 epochs, x0.1 at 30/60/90: mmcls' `resnet18_8xb32_in1k` schedule the
reference trains with). `:smoke`: 4 steps at 64x64 on a CPU (needs imagenet2012 in data_dir;
only smoke may use a random teacher).
Loss: CE + NKD(T=1, gamma=1.5) (yzd-v/cls_KD
`configs/distillers/imagenet/res34_distill_res18_img.py`, loss `mmcls/models/dis_losses/nkd.py`;
docs/methods.md#nkd). The reference's teacher is mmcls'
ResNet-34 (`resnet34_8xb32_in1k`, 73.62 top-1), not torchvision's.
Expected top-1: 71.96 (cls_KD nkd.md). The student alone has 69.90 there.
Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, arg = recipes.imagenet(arg)
  if arg != 'smoke':
    c.batch_size = 256
  c.optimizer.update(learning_rate=0.1, lr_base_batch_size=256)
  c.losses.ce = dict(weight=1.0)
  c.losses.nkd = dict(weight=1.0, temperature=1.0, gamma=1.5)
  return config_base.lock_config(c)
