"""The recipes by name, and the building blocks the recipe files in configs/ share.

  config = kdjax.recipes.get('dkd_r34_r18', 'smoke')   # configs/dkd_r34_r18.py:smoke
  kdjax.recipes.names()                                # every recipe

The recipe files are installed with the package (as `kdjax/configs/`), so this works after a plain
`pip install`; in a source checkout they are read from its `configs/` folder. Recipes stay one
readable file each; what several of them repeat word for word lives here.
"""

import importlib.util
import os

import kdjax
from kdjax import config_base
from kdjax.errors import KdjaxError

_PACKAGE_DIR = os.path.dirname(os.path.abspath(kdjax.__file__))


def recipe_dir() -> str:
  """The folder of the recipe files: the checkout's configs/, else the installed copy."""
  for folder in (os.path.join(os.path.dirname(_PACKAGE_DIR), 'configs'),
                 os.path.join(_PACKAGE_DIR, 'configs')):
    if os.path.isfile(os.path.join(folder, 'digits_kd.py')):
      return folder
  raise KdjaxError(f'no recipe folder next to {_PACKAGE_DIR}; reinstall kdjax')


def names() -> list[str]:
  """Every recipe's name (the file name in configs/ without .py), sorted."""
  return sorted(f[:-3] for f in os.listdir(recipe_dir())
                if f.endswith('.py') and not f.startswith('_'))


def path(name: str) -> str:
  """The file of recipe `name` ('dkd_r34_r18', 'configs/dkd_r34_r18.py' and
  'dkd_r34_r18.py' all name the same recipe), or a KdjaxError listing close names."""
  stem = os.path.basename(name).removesuffix('.py')
  file = os.path.join(recipe_dir(), f'{stem}.py')
  if not stem or not os.path.isfile(file):
    close = [n for n in names() if stem and (stem in n or n.split('_')[0] == stem.split('_')[0])]
    hint = f"; similar: {', '.join(close[:8])}" if close else ''
    raise KdjaxError(f"no recipe named '{stem}' (see kdjax.recipes.names()){hint}")
  return file


def _module(name: str):
  file = path(name)
  spec = importlib.util.spec_from_file_location(f'kdjax_recipe_{os.path.basename(file)[:-3]}',
                                                file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get(name: str, arg: str | None = None):
  """The config of recipe `name` with argument `arg` (e.g. 'smoke'), as the CLI loads
  `--config=configs/<name>.py:<arg>`; locked, like every recipe."""
  return _module(name).get_config(arg)


def docstring(name: str) -> str:
  """The recipe's docstring: its command, hardware and expected result."""
  return _module(name).__doc__ or ''

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# The digits teacher that ships with the package (trained by configs/digits_teacher.py).
DIGITS_TEACHER = os.path.join(os.path.dirname(kdjax.__file__), 'assets', 'digits_teacher')


def cifar100_mdistiller(arg, *, student, teacher=''):
  """mdistiller's CIFAR-100 recipe: SGD 0.05 momentum 0.9, batch 64, 240 epochs, decay x0.1 at
  150/180/210, weight decay 5e-4, random crop (pad 4) + flip. `smoke`: 8 steps of batch 8."""
  arg = config_base.parse_arg(arg)
  c = config_base.base_config()
  c.student.model = student
  c.teacher.model = teacher
  c.dataset = 'cifar100'
  c.input.update(train_split='train', eval_split='test', image_size=32,
                 train_augment='crop_flip', mean=CIFAR100_MEAN, std=CIFAR100_STD,
                 shuffle_buffer=50_000)
  c.batch_size = 64
  c.eval_batch_size = 500
  c.num_epochs = 240
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  c.optimizer.update(name='sgd', learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                     schedule='step', decay_epochs=(150, 180, 210), decay_factor=0.1)
  if arg == 'smoke':
    c.smoke = True
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 8
    c.log_every_steps = 2
    c.checkpoint_every_steps = 4
    c.input.shuffle_buffer = 64
  return c


# mdistiller trains these CIFAR students with learning rate 0.01 instead of 0.05 (its DKD YAMLs
# res32x4_shuv1, res32x4_shuv2, wrn40_2_shuv1, vgg13_mv2 and res50_mv2); every other student
# gets 0.05.
CIFAR_LOW_LR_STUDENTS = ('mobilenetv2_cifar', 'shufflev1', 'shufflev2')


def cifar_pair(arg, method, *, teacher, student, **hparams):
  """A CIFAR-100 teacher -> student pair on mdistiller's recipe (`cifar100_mdistiller`), with
  its learning rate for the student (0.01 for `CIFAR_LOW_LR_STUDENTS`, else 0.05) and one of its
  two logit losses at mdistiller's defaults (`mdistiller/engine/cfg.py`):

    method 'kd':  0.1 * CE + 0.9 * KD(T=4)
    method 'dkd': CE + min(epoch / 20, 1) * DKD(alpha=1, beta=8, T=4)

  `hparams` override entries of the distillation term (e.g. `beta=2.0`, as a pair's YAML
  does). Returns the config unlocked, for the recipe to lock."""
  c = cifar100_mdistiller(arg, student=student, teacher=teacher)
  if student in CIFAR_LOW_LR_STUDENTS:
    c.optimizer.learning_rate = 0.01
  if method == 'kd':
    c.losses.ce = dict(weight=0.1)
    c.losses.kd = dict(weight=0.9, temperature=4.0)
  elif method == 'dkd':
    c.losses.ce = dict(weight=1.0)
    c.losses.dkd = dict(weight=1.0, warmup_epochs=20, alpha=1.0, beta=8.0, temperature=4.0)
  else:
    raise ValueError(f"cifar_pair: method must be 'kd' or 'dkd', not {method!r}")
  c.losses[method].update(hparams)
  return c


def mlkd_terms(c, arg, *, ce_weight, kd_weight, temperature, standardize=False):
  """MLKD's objective (`mdistiller/distillers/KD_ours.py` of Jin-Ying/Multi-Level-Logit-
  Distillation): ce_weight * (CE(weak) + CE(strong)) + kd_weight * MLKD(T), MLKD over groups of
  the reference's per-GPU batch (64; the whole batch of 8 in `smoke`), and the strong view made
  as its data code makes it (FixMatch's RandAugment + Cutout on its own crop)."""
  c.input.strong_augment = 'fixmatch'
  c.losses.ce = dict(weight=ce_weight)
  c.losses.ce_strong = dict(method='ce', view='strong', weight=ce_weight)
  c.losses.mlkd = dict(weight=kd_weight, temperature=temperature, standardize=standardize,
                       group_size=8 if arg == 'smoke' else 64)
  return c


def digits(arg, *, allowed=('smoke',)):
  """The embedded 8x8 digits (1,200 train / 597 held-out): Adam 1e-3, batch 64, 1,500 steps."""
  arg = config_base.parse_arg(arg, allowed=allowed)
  c = config_base.base_config()
  c.dataset = 'uci_digits'
  c.input.update(image_size=8, mean=(0.3,), std=(0.4,), shuffle_buffer=1200)
  c.batch_size = 64
  c.eval_batch_size = 600
  c.num_train_steps = 1500
  c.log_every_steps = 250
  c.eval_every_epochs = 250 / 18  # Every 250 steps (18 per epoch): a held-out curve; cheap.
  c.checkpoint_every_steps = 750
  c.keep_checkpoints = 1
  c.optimizer.update(name='adamw', learning_rate=1e-3, weight_decay=0.0, schedule='constant')
  if arg == 'smoke':
    c.smoke = True
    c.num_train_steps = 20
    c.log_every_steps = 5
    c.checkpoint_every_steps = 10
  return c, arg


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet(arg, *, allowed=('smoke',)):
  """mdistiller's ImageNet recipe: SGD momentum 0.9, lr 0.2 at batch 512 (scaled linearly with
  the global batch), 100 epochs, decay x0.1 at 30/60/90, weight decay 1e-4; Inception crop 224 +
  flip for training, resize 256 + centre crop 224 for evaluation; ResNet-34 -> ResNet-18.
  `smoke`: 4 steps of batch 8 at 64x64 (same code path, tiny sizes)."""
  arg = config_base.parse_arg(arg, allowed=allowed)
  c = config_base.base_config()
  c.dataset = 'imagenet2012'
  c.input.update(train_split='train', eval_split='validation', image_size=224,
                 train_augment='inception_crop_flip', eval_preprocess='resize_center_crop',
                 eval_resize_size=256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 shuffle_buffer=16_384, prefetch_batches=4)
  c.batch_size = 512
  c.eval_batch_size = 1000
  c.num_epochs = 100
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2500
  c.optimizer.update(name='sgd', learning_rate=0.2, lr_base_batch_size=512, momentum=0.9,
                     weight_decay=1e-4, schedule='step', decay_epochs=(30, 60, 90))
  c.student.model = 'resnet18'
  c.teacher.model = 'resnet34'
  if arg == 'smoke':
    c.smoke = True
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_train_steps = 4
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.input.update(image_size=64, eval_resize_size=73, shuffle_buffer=64)
  return c, arg


def imagenet_peers(arg):
  """Two trainable ResNet-18 peers and no teacher, PaddleClas' DML schedule (cosine lr 0.4 at
  batch 1024 with 5 warm-up epochs): CE on each peer plus the DML term."""
  c, arg = imagenet(arg)
  c.teacher.model = ''
  c.peer.model = 'resnet18'
  c.optimizer.update(learning_rate=0.4, lr_base_batch_size=1024, schedule='cosine',
                     warmup_epochs=5)
  c.losses.ce = dict(weight=1.0)
  c.losses.ce_peer = dict(method='ce', weight=1.0, network='peer')
  c.losses.dml = dict(weight=1.0)
  return c, arg


def image_folder(arg, *, allowed=('smoke',)):
  """`imagenet`'s recipe (ResNet-34 -> ResNet-18, SGD, step decay at 30/60/90 of 100 epochs) on
  an image folder (`--config.dataset=folder:/path`): batch 128 (lr 0.05 by the linear rule),
  ops that take decoded images of any size and channel count (random-resized crop + flip at 224;
  bicubic resize 256 + centre crop), the held-out split found in the folder, and mean / std
  computed from its training images. `smoke`: 4 steps of batch 8 at 16x16 with the tiny
  digits_cnn -> cnn4 pair."""
  c, arg = imagenet(arg, allowed=allowed)
  c.dataset = ''  # must be given: --config.dataset=folder:/path/to/images
  c.input.update(eval_split='', train_augment='random_resized_crop_flip',
                 eval_preprocess='bicubic_resize_center_crop', mean=(), std=(),
                 prefetch_batches=2)
  c.batch_size = 128
  c.eval_batch_size = 256
  if arg == 'smoke':
    c.batch_size = c.eval_batch_size = 8
    c.input.update(image_size=16, eval_resize_size=18)
    c.student.model, c.teacher.model = 'cnn4', 'digits_cnn'
  return c, arg


# OFA-KD (Hao et al. NeurIPS 2023): its four training settings (Hao840/OFAKD configs/*.yaml,
# global batch = 8 GPUs x the per-GPU batch there, lr as given: OFAKD does not rescale it).
TOKEN_STUDENTS = ('deit_tiny_patch16_224', 'deit_small_patch16_224', 'vit_small_patch16_224',
                  'vit_base_patch16_224', 'swin_tiny_patch4_window7_224', 'mixer_b16_224',
                  'resmlp_12_224')
# OFAKD taps ViT / Mixer / ResMLP students after blocks 1, 3, 9, 11 (0-based), class token kept.
OFA_BLOCK_TAPS = ('block1', 'block3', 'block9', 'block11')


def ofa_pair(arg, *, dataset, teacher, student, eps):
  """OFA-KD on ImageNet or CIFAR-100 ('imagenet2012' | 'cifar100'), with OFAKD's recipe for the
  student's kind. Returns the config unlocked, for the recipe to lock.

    CNN student, ImageNet: SGD 0.1 at batch 512, 100 epochs, x0.1 every 30 (warm-up 3 epochs
      from 1e-4), weight decay 1e-4; Inception crop + flip.
    CNN student, CIFAR-100: SGD 0.05 at batch 1024, 300 epochs cosine to 1e-3 (warm-up 3 from
      1e-4), weight decay 2e-3; branch weight 0.1 (the author's setting for CNN students).
    ViT / MLP student: AdamW 5e-4 at batch 1024, weight decay 0.05, 300 epochs cosine to 1e-6
      (ImageNet) / 1e-5 (CIFAR), warm-up 20 epochs from 5e-7, gradient clipping 5,
      RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / cutmix 1.0; an EMA of
      the weights (0.99996) on ImageNet.
  Always: CE with label smoothing 0.1 + OFA(eps, T=1) on stages 1-4 and the logits. CIFAR-100
  images are upsampled to 224 as OFAKD's timm transforms do (random-resized crop for training;
  resize 256 + centre crop 224 for evaluation). `smoke`: 4 steps of batch 8 at 64x64 (224 when a
  Swin needs it)."""
  arg = config_base.parse_arg(arg)
  token_student = student in TOKEN_STUDENTS
  if dataset == 'imagenet2012':
    c, _ = imagenet(arg)
    c.input.train_augment = 'inception_crop_flip'
  elif dataset == 'cifar100':
    c = cifar100_mdistiller(arg, student=student, teacher=teacher)
    c.input.update(image_size=224, train_augment='random_resized_crop_flip',
                   eval_preprocess='bicubic_resize_center_crop', eval_resize_size=256)
  else:
    raise ValueError(f'ofa_pair: dataset must be imagenet2012 or cifar100, not {dataset!r}')
  c.student.model, c.teacher.model = student, teacher
  c.optimizer.update(lr_base_batch_size=0, warmup_learning_rate=1e-4)
  c.losses.ce = dict(weight=1.0, label_smoothing=0.1)
  c.losses.ofa = dict(weight=1.0, eps=eps, temperature=1.0)
  if token_student and 'swin' not in student:
    c.losses.ofa.student_taps = OFA_BLOCK_TAPS
  if token_student:
    c.batch_size = 1024
    c.num_epochs = 300
    c.optimizer.update(name='adamw', learning_rate=5e-4, weight_decay=0.05, b1=0.9, b2=0.999,
                       eps=1e-8, schedule='cosine', warmup_epochs=20, warmup_learning_rate=5e-7,
                       min_learning_rate=1e-6 if dataset == 'imagenet2012' else 1e-5,
                       clip_grad_norm=5.0, decay_epochs=())
    c.input.update(randaugment='rand-m9-mstd0.5-inc1', random_erasing=0.25)
    c.mixup.update(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)
    if dataset == 'imagenet2012':
      c.ema.decay = 0.99996
  elif dataset == 'imagenet2012':
    c.batch_size = 512
    c.optimizer.update(name='sgd', learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
                       schedule='step', decay_epochs=(30, 60, 90), warmup_epochs=3)
  else:
    c.batch_size = 1024
    c.num_epochs = 300
    c.optimizer.update(name='sgd', learning_rate=0.05, momentum=0.9, weight_decay=2e-3,
                       schedule='cosine', decay_epochs=(), warmup_epochs=3,
                       min_learning_rate=1e-3)
    c.losses.ofa.branch_weight = 0.1
  if arg == 'smoke':
    c.batch_size = c.eval_batch_size = 8
    c.num_train_steps = 4
    c.log_every_steps = c.checkpoint_every_steps = 2
    swin = 'swin' in teacher or 'swin' in student
    c.input.update(image_size=224 if swin else 64, eval_resize_size=256 if swin else 73,
                   shuffle_buffer=64)
  return c
