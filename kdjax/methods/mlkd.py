"""Multi-Level Logit Distillation, Jin et al. CVPR 2023 (docs/methods.md#mlkd).

MLKD reads the student's and the teacher's logits on two views of every image, the batch's
main (weak) image and its strong view (`input.strong_augment='fixmatch'`, taps '...@strong').
Its confidence shares and its batch-level term depend on which examples share the batch, so
the loss is computed per group of `group_size` examples: 64, the reference's per-GPU batch
(batch 64 on one GPU on CIFAR-100, 512 over 8 GPUs under DataParallel on ImageNet), whose
per-replica losses the reference averages. The cross-entropy on both views is two `ce` terms
(`view=''` and `view='strong'`), as in the recipes.
"""

from kdjax import losses
from kdjax.methods.registry import Method
from kdjax.methods.registry import STRONG
from kdjax.methods.registry import register

MLKD = register(Method(
    name='mlkd', doc='Jin et al. CVPR 2023: instance-, batch- and class-level alignment over five '
                     'temperatures on a weak and a strong view',
    hparams=dict(temperature=4.0, standardize=False), group_size=64,
    reads=lambda: {'student': ('logits', 'logits' + STRONG),
                   'teacher': ('logits', 'logits' + STRONG)},
    loss=lambda x, *, temperature, standardize: losses.mlkd(
        x.student[0], x.teacher[0], x.student[1], x.teacher[1], temperature=temperature,
        standardize=standardize)))
