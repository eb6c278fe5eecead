r"""WKD-L + WKD-F (Lv, Yang and Li, NeurIPS 2024), CIFAR-100, resnet32x4 -> resnet8x4, the reference's recipe.

  python -m kdjax.main --config=configs/wkd_r32x4_r8x4.py --workdir=/tmp/wkd_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4 \
      --config.losses.wkd_l.cost_matrix=/path/to/linear_cka.pth

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a
CPU with `cost_matrix=fc` (1 - cosine of the teacher's classifier weights).
Cost matrix: the reference's `wkd_cost_matrix/cifar100/resnet32x4/linear_cka.pth` (1 - linear
CKA between the classes' stage-3 features of mdistiller's resnet32x4 teacher on the training set,
from github.com/JiamingLv/WKD). It belongs to that teacher checkpoint: with another resnet32x4
(e.g. one trained by configs/train_r32x4.py) it is a neighbouring network's matrix; kdjax does
not compute CKA matrices (`cost_matrix=fc` is the reference's other option).
Loss: CE + WKD_target + w_l(e) * WKD-L(T 8, lambda 0.05, 10 Sinkhorn iterations, CKA cost
sharpened by 1) + w_f(e) * WKD-F(stage 4 = the last stage, conv1x1 projector, whole map, mean
weight 8), w_l = 200 and w_f = 0.08 up to epoch 150, then decayed per epoch by a cosine to 0 at
epoch 240 (JiamingLv/WKD `configs/cifar100/wkd_lf/res32x4_res8x4.yaml`; docs/methods.md#wkd_l,
#wkd_f). Expected top-1: 77.28 (JiamingLv/WKD README, WKD-L+WKD-F, RN32x4 -> RN8x4). Not yet
reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes
from kdjax.methods import wkd


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.wkd_target = dict(weight=1.0)
  c.losses.wkd_l = dict(
      weight=200.0,
      weight_schedule=wkd.cosine_decay_schedule(200.0, start_epoch=150, num_epochs=240),
      temperature=8.0, sinkhorn_reg=0.05, sinkhorn_iters=10, cost_sharpen=1.0,
      cost_matrix='fc' if c.smoke else 'wkd_cost_matrix/cifar100/resnet32x4/linear_cka.pth')
  c.losses.wkd_f = dict(
      weight=0.08,
      weight_schedule=wkd.cosine_decay_schedule(0.08, start_epoch=150, num_epochs=240),
      student_tap='stage4', teacher_tap='stage4', projector='conv1x1', grid=1, mean_weight=8.0,
      eps=1e-5)
  return config_base.lock_config(c)
