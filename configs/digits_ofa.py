r"""OFA-KD from the shipped CNN teacher into a ViT student on the embedded digits, few labels.

  python -m kdjax.main --config=configs/digits_ofa.py --workdir=/tmp/digits_ofa
  python -m kdjax.main --config=configs/digits_ofa.py:baseline --workdir=/tmp/digits_vit_base
  python -m kdjax.main --config=configs/digits_ofa.py:kd --workdir=/tmp/digits_vit_kd
  python -m kdjax.main --config=configs/digits_ofa.py:labelled_only --workdir=/tmp/digits_ofa_l
  python -m kdjax.main --config=configs/digits_ofa.py:logits_only --workdir=/tmp/digits_ofa_z

The quickstart's setting (configs/digits_kd.py) with a heterogeneous pair: the student is
digits_vit (a 4-block ViT over 2x2 patches, 13.7k parameters) and keeps 100 of the 1,200
training labels; the teacher is the shipped digits_cnn (a BN CNN). OFA (docs/methods.md#ofa)
adds a branch on each of the ViT's four blocks (its tokens with the class token, as OFA-KD taps
a ViT) that maps them to logits; every branch and the student's own logits learn from the
teacher's logits with the OFA loss (eps 1, OFA-KD's CIFAR setting). The OFA loss needs a target
class; here the 1,100 examples whose label is hidden take the teacher's argmax
(`unlabeled='teacher'`). Variants: `:labelled_only` is OFA as published (rows without a label
are left out of it, so it reads the teacher on the 100 labelled images only); `:logits_only` is
OFA without the branches; `:kd` the same student with KD (T=4) instead of OFA; `:baseline` the
student without a teacher.
Hardware: a laptop CPU, about a minute per run.
Expected held-out top-1 (597 images, mean ± std over seeds 0-2, measured 2026-12-03 on a 2-core
CPU with this recipe and --config.seed=0, 1, 2): OFA 85.1 ± 2.4 (85.8, 87.1, 82.4);
`:logits_only` 85.4 ± 1.0; `:labelled_only` 33.7 ± 1.0; `:kd` 89.1 ± 2.4; `:baseline` 41.5 ± 4.1.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, arg = recipes.digits(arg, allowed=('smoke', 'baseline', 'kd', 'labelled_only',
                                         'logits_only'))
  c.input.num_labeled = 100
  c.student.model = 'digits_vit'
  c.losses.ce = dict(weight=1.0)
  if arg != 'baseline':
    c.teacher.model = 'digits_cnn'
    c.teacher.checkpoint = recipes.DIGITS_TEACHER
  if arg == 'kd':
    c.losses.kd = dict(weight=1.0, temperature=4.0)
  elif arg != 'baseline':
    c.losses.ofa = dict(weight=1.0, eps=1.0, unlabeled='teacher',
                        student_taps=('block0', 'block1', 'block2', 'block3'))
    if arg == 'labelled_only':
      c.losses.ofa.unlabeled = 'skip'
    if arg == 'logits_only':
      c.losses.ofa.update(stages=(), student_taps=())
  return config_base.lock_config(c)
