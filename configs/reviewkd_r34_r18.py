r"""ReviewKD (Chen et al., CVPR 2021), ImageNet, ResNet-34 -> ResNet-18.

  python -m kdjax.main --config=configs/reviewkd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir, export, or .safetensors

Hardware: 8 GPUs or a TPU pod slice. mdistiller's ReviewKD schedule: global batch 256, lr 0.1
(scaled with the batch), 100 epochs, decay at 30/60/90. `:smoke`: 4 steps at 64x64 on a CPU.
Loss: CE + HCL over five ABF-fused levels (layer1..4 pre-ReLU and the pooled feature on both
sides), weight 1, no warm-up (official `ImageNet/README.md`, mdistiller `r34_r18/reviewkd.yaml`;
docs/methods.md#reviewkd). Expected top-1: not checked here (mdistiller lists ReviewKD for this
pair).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, arg = recipes.imagenet(arg)
  if arg != 'smoke':
    c.batch_size = 256
  c.optimizer.update(learning_rate=0.1, lr_base_batch_size=256)
  c.losses.ce = dict(weight=1.0)
  c.losses.reviewkd = dict(weight=1.0)
  return config_base.lock_config(c)
