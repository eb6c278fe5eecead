r"""CRD, contrastive representation distillation (Tian et al., ICLR 2020), ImageNet, R34 -> R18.

  python -m kdjax.main --config=configs/crd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir, export, or .safetensors

Hardware: 8 GPUs or a TPU pod slice. mdistiller's CRD schedule: global batch 256, lr 0.1 (scaled
with the batch), 100 epochs, decay at 30/60/90. The two memory banks hold one 128-d row per
training image: 2 x 1,281,167 x 128 x 4 B = 1.3 GB, replicated on every device.
`:smoke`: 4 steps at 64x64 on a CPU, 64 negatives.
Loss: CE + 0.8 * CRD(d=128, 16,384 negatives drawn uniformly with replacement, tau 0.07,
momentum 0.5) on the pooled features (mdistiller `configs/imagenet/r34_r18/crd.yaml`;
docs/methods.md#crd). Expected top-1: not checked here (mdistiller lists CRD for this pair).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, arg = recipes.imagenet(arg)
  if arg != 'smoke':
    c.batch_size = 256
  c.optimizer.update(learning_rate=0.1, lr_base_batch_size=256)
  c.input.add_index = True
  c.losses.ce = dict(weight=1.0)
  c.losses.crd = dict(weight=0.8, dim=128, num_negatives=64 if arg == 'smoke' else 16384,
                      temperature=0.07, momentum=0.5)
  return config_base.lock_config(c)
