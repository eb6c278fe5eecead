r"""KD on your own images: an image folder (one subfolder per class), ResNet-34 -> ResNet-18.

  python -m kdjax.prepare folder:/path/to/images     # optional: converts it, prints the summary
  python -m kdjax.main --config=configs/folder_kd.py:teacher --workdir=/tmp/folder_teacher \
      --config.dataset=folder:/path/to/images
  python -m kdjax.main --config=configs/folder_kd.py --workdir=/tmp/folder_kd \
      --config.dataset=folder:/path/to/images --config.teacher.checkpoint=/tmp/folder_teacher

Folder layouts, the holdout (`input.holdout_fraction`, default 0.1 of each class when there is no
val/ or test/ folder) and the computed mean / std: README.md#your-own-data. The teacher must
predict this folder's classes: a kdjax workdir or export trained on it (`:teacher` trains the
ResNet-34 alone with CE), or give another `--config.teacher.model` with its checkpoint.
To start `:teacher` from ImageNet weights (torchvision's or timm's resnet34), add
`--config.student.checkpoint=r34.safetensors --config.student.reset_classifier=True`: all but
the 1000-class classifier loads, and a fresh one is trained for the folder's classes.

`:teacher` = CE only, on teacher.model as the trained network; default = 0.1 CE + 0.9 KD(T=4)
(mdistiller's KD weights); `:smoke` = 4 steps at 16x16 on tiny models, random teacher.
Images of any size and channel count: random-resized crop + flip at 224 for training, bicubic
resize 256 + centre crop 224 for evaluation (recipes.image_folder).
Expected top-1: none to quote; it depends on your data (this recipe is a starting point, not
tuned, and no accuracy has been measured with it).
Hardware: a GPU for 224x224 ResNets; lower --config.input.image_size (and eval_resize_size)
for small images.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, arg = recipes.image_folder(arg, allowed=('smoke', 'teacher'))
  if arg == 'teacher':
    c.student.model, c.teacher.model = c.teacher.model, ''
    c.losses.ce = dict(weight=1.0)
  else:
    c.losses.ce = dict(weight=0.1)
    c.losses.kd = dict(weight=0.9, temperature=4.0)
  return config_base.lock_config(c)
