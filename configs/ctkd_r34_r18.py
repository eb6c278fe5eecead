r"""CTKD (Li et al., AAAI 2023) on KD, ImageNet, ResNet-34 -> ResNet-18, the reference's recipe.

  python -m kdjax.main --config=configs/ctkd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34   # kdjax workdir or export folder

Hardware: 8 GPUs or a TPU pod slice (global batch 256, lr 0.1 scaled with the batch, 120
epochs, x0.1 at 30/60/90, weight decay 1e-4). `:smoke`: 4 steps at 64x64 on a CPU (needs
imagenet2012 in data_dir).
Loss: CE + KD at CTKD's learned global temperature 1 + 20 sigmoid(theta), lambda 0 -> 1 over the
first 5 epochs (zhengli97/CTKD `scripts/run_imagenet_distill.sh`: `-r 1 -a 1 -b 0 --t_start 1
--t_end 20 --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 5`, batch 256 over 8 GPUs,
120 epochs; docs/methods.md#ctkd). The reference trains one temperature per GPU (the module is
outside DistributedDataParallel); kdjax trains one, on the global batch's loss.
Expected top-1: 71.32 (zhengli97/CTKD README, ImageNet table, KD + CTKD; KD alone 70.83 there).
Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, arg = recipes.imagenet(arg)
  if arg != 'smoke':
    c.batch_size = 256
    c.num_epochs = 120
  c.optimizer.update(learning_rate=0.1, lr_base_batch_size=256)
  c.losses.ce = dict(weight=1.0)
  c.losses.ctkd = dict(weight=1.0, base='kd', min_temperature=1.0, temperature_span=20.0,
                       lambda_start=0.0, lambda_end=1.0, lambda_epochs=5.0)
  return config_base.lock_config(c)
