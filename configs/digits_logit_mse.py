r"""Logit MSE distillation on the embedded 8x8 digits with few labels (the quickstart's setting).

  python -m kdjax.main --config=configs/digits_logit_mse.py --workdir=/tmp/digits_logit_mse

The same student, data and teacher as configs/digits_kd.py (mlp32 keeping 100 of the 1,200
training labels; the shipped digits_cnn teacher's outputs on every training image), with the
teacher's logits regressed by mean squared error (docs/methods.md#logit_mse) instead of KD.
Hardware: a laptop CPU, well under a minute per run.
Expected held-out top-1: 91.0 ± 0.3% (mean ± std over seeds 0, 1, 2: 91.3, 90.6, 91.0; measured
2026-12-02 on a 2-core CPU by running this recipe with --config.seed=0, 1, 2). Same setting, from
configs/digits_kd.py: KD (T=4) 92.2 ± 0.4%, no teacher 82.0 ± 0.6%.
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
