r"""WKD-L + WKD-F (Lv, Yang and Li, NeurIPS 2024), ImageNet, ResNet-34 -> ResNet-18, the reference's recipe.

  python -m kdjax.main --config=configs/wkd_r34_r18.py --workdir=W \
      --config.teacher.checkpoint=/path/to/resnet34 \
      --config.losses.wkd_l.cost_matrix=/path/to/logit_linear_cka.pth

Hardware: one GPU in the reference (batch 256, lr 0.1, 100 epochs, decay x0.1 at 30/60/90, weight
decay 1e-4); any mesh gives the same losses (every term is per sample).
Cost matrix: the reference's `wkd_cost_matrix/imagenet/ResNet34/logit_linear_cka.pth` (1 - linear
CKA between the classes' logits of torchvision's ResNet-34 on the training set, from
github.com/JiamingLv/WKD; a `.npy` copy needs no torch). kdjax does not compute CKA matrices;
`cost_matrix=fc` uses 1 - cosine of the teacher's classifier weights instead (the reference's
other option, not its published setting). `:smoke`: 4 steps at 64x64 on a CPU (needs
imagenet2012 in data_dir) with `cost_matrix=fc` and `grid=1` (the 2x2 stage-4 map of a 64x64
image cannot be split into 4x4 cells).
Loss: CE + WKD_target + w_l(e) * WKD-L(T 2, lambda 0.05, 10 Sinkhorn iterations, CKA cost
sharpened by 1) + w_f(e) * WKD-F(stage 4, bottleneck projector, 4x4 grid, mean weight 2), with
w_l = 10 and w_f = 1 decayed per epoch by a cosine from epoch 1 to 0 at epoch 100 (JiamingLv/WKD
`configs/imagenet/r34_r18/wkd_lf.yaml`, `mdistiller/engine/cfg.py`; docs/methods.md#wkd_l,
#wkd_f). Expected top-1: 72.76 (JiamingLv/WKD README, WKD-L+WKD-F, ResNet34 -> ResNet18). Not
yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes
from kdjax.methods import wkd


def get_config(arg=None):
  c, arg = recipes.imagenet(arg)
  if arg != 'smoke':
    c.batch_size = 256
  c.optimizer.update(learning_rate=0.1, lr_base_batch_size=256)
  smoke = arg == 'smoke'
  c.losses.ce = dict(weight=1.0)
  c.losses.wkd_target = dict(weight=1.0)
  c.losses.wkd_l = dict(
      weight=10.0, weight_schedule=wkd.cosine_decay_schedule(10.0, start_epoch=0, num_epochs=100),
      temperature=2.0, sinkhorn_reg=0.05, sinkhorn_iters=10, cost_sharpen=1.0,
      cost_matrix='fc' if smoke else 'wkd_cost_matrix/imagenet/ResNet34/logit_linear_cka.pth')
  c.losses.wkd_f = dict(
      weight=1.0, weight_schedule=wkd.cosine_decay_schedule(1.0, start_epoch=0, num_epochs=100),
      student_tap='stage4', teacher_tap='stage4', projector='bottleneck', hidden_channels=256,
      grid=1 if smoke else 4, mean_weight=2.0, eps=1e-5)
  return config_base.lock_config(c)
