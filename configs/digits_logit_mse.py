r"""Logit MSE distillation on the embedded 8x8 digits with few labels (the quickstart's setting).

  python -m kdjax.main --config=configs/digits_logit_mse.py --workdir=/tmp/digits_logit_mse

The same student, data and teacher as configs/digits_kd.py (mlp32 keeping 100 of the 1,200
training labels; the shipped digits_cnn teacher's outputs on every training image), with the
teacher's logits regressed by mean squared error (docs/methods.md#logit_mse) instead of KD.
Hardware: a laptop CPU, well under a minute per run.
Expected held-out top-1: EXPECTED (seeds 0-2, measured with kdjax on a 2-core CPU; the
digits_kd.py docstring has the KD and no-teacher figures of the same setting).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c, _ = recipes.digits(arg)
  c.input.num_labeled = 100
  c.student.model = 'mlp32'
  c.teacher.model = 'digits_cnn'
  c.teacher.checkpoint = recipes.DIGITS_TEACHER
  c.losses.ce = dict(weight=1.0)
  c.losses.logit_mse = dict(weight=1.0)
  return config_base.lock_config(c)
