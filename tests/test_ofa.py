"""OFA-KD (kdjax/methods/ofa.py): the stage branches, the term, training and export.

Branch parameter counts are OFAKD's: its `distillers/ofa.py` projector construction (with its
`distillers/utils.py` SepConv / PatchMerging and timm's `Block`) built in PyTorch with timm 1.0.31
and counted with `sum(p.numel() for p in projector.parameters())`, per stage 1..4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from kdjax import checkpoint
from kdjax import losses
from kdjax import methods
from kdjax import models
from kdjax import train
from kdjax.errors import KdjaxError
from kdjax.methods import ofa
from kdjax.models.common import param_count

# (student, teacher, student_taps) -> OFAKD's projector parameters per stage, 1000 classes.
OFAKD_COUNTS = {
    ('resnet18', 'swin_tiny_patch4_window7_224', ()):
        ('cnn', [1_103_848, 1_090_024, 1_037_800, 1_162_984]),
    ('deit_tiny_patch16_224', 'convnext_tiny', ('block1', 'block3', 'block9', 'block11')):
        ('tokens', [1_674_856, 1_230_568, 786_280, 786_280]),
    ('resmlp_12_224', 'convnext_tiny', ('block1', 'block3', 'block9', 'block11')):
        ('tokens', [6_297_832, 4_524_520, 2_751_208, 2_751_208]),
}


def _context(student, teacher, input_shape, taps):
  """A BuildContext and the tapped shapes for a student/teacher pair (shapes only)."""
  nets = {'student': student, 'teacher': teacher}
  shape = lambda net, tap: train.tap_shapes(nets[net], [tap], input_shape)[tap]
  ctx = methods.BuildContext(teacher=teacher, student=student, shapes=shape, term='ofa',
                             term_taps=dict(stages=(1, 2, 3, 4), student_taps=taps))
  reads = ofa.OFA.reads(stages=(1, 2, 3, 4), student_taps=taps)
  student_shapes = train.tap_shapes(student, list(reads['student'][1:]), input_shape)
  return ctx, tuple(student_shapes[t] for t in reads['student']), (shape('teacher', 'logits'),)


@pytest.mark.parametrize('pair', list(OFAKD_COUNTS), ids=lambda p: f'{p[1]}->{p[0]}')
def test_branch_parameters_equal_ofakd(pair):
  student_name, teacher_name, taps = pair
  kind, expected = OFAKD_COUNTS[pair]
  student = models.get_model(student_name, num_classes=1000)
  teacher = models.get_model(teacher_name, num_classes=1000)
  ctx, student_shapes, teacher_shapes = _context(student, teacher, (1, 224, 224, 3), taps)
  connector = ofa.OFA.connector(ctx, student_shapes, teacher_shapes, branch='auto')
  assert [k for k, _ in connector.branches] == [kind] * 4
  zeros = lambda shapes: tuple(jnp.zeros(s.shape) for s in shapes)
  variables = jax.eval_shape(lambda: connector.init(
      jax.random.key(0), zeros(student_shapes), zeros(teacher_shapes), train=False))
  counts = [param_count(variables['params'][f'stage{s}']) for s in (1, 2, 3, 4)]
  assert counts == expected
  out = jax.eval_shape(lambda v: connector.apply(
      v, zeros(student_shapes), zeros(teacher_shapes), train=False), variables)
  assert [o.shape for o in out.logits] == [(1, 1000)] * 4
  if kind == 'tokens':  # DeiT keeps its class token in front; ResMLP has none (mean token).
    prefix = [kw['prefix'] for _, kw in connector.branches]
    assert prefix == [1 if 'deit' in student_name else 0] * 4
    assert all(kw['grid'] == (14, 14) for _, kw in connector.branches)


def test_merge_count_is_ofakds():
  assert [ofa.merge_count((g, g)) for g in (4, 7, 14, 28, 56)] == [0, 0, 1, 2, 3]


def _inputs(rng, batch=6, classes=5, stages=3):
  z = lambda: jnp.asarray(rng.normal(size=(batch, classes)) * 2, jnp.float32)
  labels = jnp.asarray(rng.integers(0, classes, size=batch), jnp.int32)
  branches = tuple(z() for _ in range(stages))
  return methods.Inputs(student=(z(),), teacher=(z(),), connector=ofa.Branches(branches),
                        labels=labels)


def test_term_is_the_ofa_loss_on_every_branch_and_on_the_logits():
  x = _inputs(np.random.default_rng(0))
  t, y = x.teacher[0], x.labels
  one = lambda z, eps: losses.ofa(z, t, y, temperature=2.0, eps=eps)
  got = ofa.OFA.loss(x, temperature=2.0, eps=1.5, stage_eps=(), branch_weight=0.1,
                     unlabeled='skip')
  want = one(x.student[0], 1.5) + 0.1 * sum(one(z, 1.5) for z in x.connector.logits)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  got = ofa.OFA.loss(x, temperature=2.0, eps=1.5, stage_eps=(1.0, 1.2, 1.4), branch_weight=1.0,
                     unlabeled='skip')
  want = one(x.student[0], 1.5) + sum(one(z, e) for z, e in zip(x.connector.logits,
                                                                (1.0, 1.2, 1.4)))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(KdjaxError, match='one eps per stage'):
    ofa.OFA.loss(x, temperature=1.0, eps=1.0, stage_eps=(1.0,), branch_weight=1.0,
                 unlabeled='skip')


def test_unlabeled_rows_are_skipped_or_take_the_teachers_class():
  labels = jnp.asarray([2, -1, 0, -1])
  teacher = jnp.asarray(np.eye(4)[[1, 3, 1, 0]] * 5.0, jnp.float32)
  np.testing.assert_array_equal(ofa.targets(labels, teacher, 'skip'), [2, -1, 0, -1])
  np.testing.assert_array_equal(ofa.targets(labels, teacher, 'teacher'), [2, 3, 0, 0])
  with pytest.raises(KdjaxError, match="'skip' or 'teacher'"):
    ofa.targets(labels, teacher, 'argmax')


def test_without_stages_it_is_the_logit_loss_and_builds_no_connector():
  term, = methods.build_terms({'ofa': dict(weight=1.0, eps=1.5, stages=())})
  assert term.reads == {'student': ('logits',), 'teacher': ('logits',)}
  x = _inputs(np.random.default_rng(1))
  outputs = {'student': {'logits': x.student[0]}, 'teacher': {'logits': x.teacher[0]}}
  np.testing.assert_allclose(term(outputs, x.labels),
                             losses.ofa(x.student[0], x.teacher[0], x.labels, temperature=1.0,
                                        eps=1.5), rtol=1e-6)
  assert term.build_connector(methods.BuildContext(), {'student': {'logits': None},
                                                       'teacher': {'logits': None}}) is None


@pytest.mark.parametrize('bad, match', [
    (dict(stages=(0, 2)), 'among 1..4'),
    (dict(stages=(2, 2)), 'among 1..4'),
    (dict(stages=(1, 2), student_taps=('block0',)), 'one tap per stage'),
])
def test_bad_stage_settings_fail_clearly(bad, match):
  with pytest.raises(KdjaxError, match=match):
    methods.build_terms({'ofa': dict(weight=1.0, **bad)})[0].reads  # pylint: disable=expression-not-assigned


def _digits_config(data_dir, student, teacher, **ofa_hparams):
  config, _ = conftest.load_recipe('digits_ofa', 'smoke')
  with config.unlocked():
    config.data_dir = data_dir
    config.student.model = student
    config.teacher.model = teacher
    config.teacher.checkpoint = '' if teacher != 'digits_cnn' else config.teacher.checkpoint
    config.losses = dict(ce=dict(weight=1.0), ofa=dict(weight=1.0, **ofa_hparams))
  return config


@pytest.mark.parametrize('student, teacher, hparams, kind', [
    ('digits_vit', 'digits_cnn', dict(student_taps=('block0', 'block1', 'block2', 'block3')),
     'tokens'),
    pytest.param('digits_mixer', 'digits_cnn', {}, 'tokens', marks=pytest.mark.slow),
    ('digits_cnn', 'digits_vit', dict(stages=(1, 2)), 'cnn'),
])
def test_one_step_trains_student_and_branches_and_leaves_the_teacher(digits_data_dir, student,
                                                                      teacher, hparams, kind):
  run = conftest.Run(_digits_config(digits_data_dir, student, teacher, **hparams))
  connector = run.setup.objective.connectors['ofa']
  assert {k for k, _ in connector.branches} == {kind}
  before = jax.device_get(run.state.params)
  teacher_before = jax.device_get(run.teacher)
  for _ in range(2):  # Mixer's zero-initialised head passes gradient back from step 2 on.
    metrics = run.step()
    assert np.isfinite(float(metrics['loss/ofa'])) and float(metrics['loss/ofa']) > 0
  after = jax.device_get(run.state.params)
  for name in ('student', 'connectors'):
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before[name], after[name])
    assert all(jax.tree.leaves(changed)), name
  # Every stage's branch received gradient (Adam moves each parameter it sees a gradient for).
  assert set(after['connectors']['ofa']) == {f'stage{s}' for s in
                                             hparams.get('stages', (1, 2, 3, 4))}
  jax.tree.map(np.testing.assert_array_equal, teacher_before, jax.device_get(run.teacher))


def test_branches_are_trained_and_checkpointed_but_never_exported(tmp_path, digits_data_dir):
  config = _digits_config(digits_data_dir, 'digits_vit', 'digits_cnn')
  with config.unlocked():
    config.num_train_steps = 4
    config.checkpoint_every_steps = 4
  setup = train.build(config)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir, setup=setup)
  described = train.describe_parameters(train.create_state(setup, train.make_mesh(), 0), setup)
  assert 'student 13,690' in described
  assert 'connectors (trained, never exported): ofa ' in described
  variables, _ = checkpoint.restore_student(workdir)
  student = models.get_model('digits_vit', num_classes=10)
  expected = jax.eval_shape(lambda: student.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
  assert jax.tree.structure(variables['params']) == jax.tree.structure(expected['params'])
  meta = checkpoint.export_workdir(workdir, str(tmp_path / 'export'))
  exported, _ = checkpoint.load_exported(str(tmp_path / 'export'))
  assert set(exported) == {'params'} and meta['model'] == 'digits_vit'
  assert param_count(exported['params']) == 13_690


def test_a_cnn_branch_needs_a_map():
  with pytest.raises(KdjaxError, match='NHWC map'):
    ofa._branch_spec('cnn', 1, (1, 17, 16), d_s=16, d_t=64, num_classes=10, term='ofa')  # pylint: disable=protected-access
