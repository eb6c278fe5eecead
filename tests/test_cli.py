"""End to end through the command line: smoke recipes, errors, SIGKILL + resume, export."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import conftest
from kdjax import checkpoint
from kdjax import models


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _assert_one_line_error(proc, fragment):
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert lines and lines[-1].startswith('kdjax: error:'), proc.stderr[-2000:]
  assert fragment in lines[-1], lines[-1]


@pytest.mark.parametrize('args, fragment', [
    (['--config.batch_sizee=3'], "unknown config key 'batch_sizee'"),
    (['--config.batch_size=0'], 'batch_size'),
    (['--config.student.model=resnet19'], "unknown model 'resnet19'"),
    (['--config.teacher.checkpoint=/nonexistent/teacher'], "'/nonexistent/teacher' does not"),
])
def test_bad_input_exits_with_one_line_and_writes_nothing(tmp_path, digits_data_dir, args,
                                                          fragment):
  workdir = tmp_path / 'w'
  proc = conftest.run_cli('kdjax.main', '--config=configs/digits_kd.py:smoke',
                          f'--workdir={workdir}', f'--config.data_dir={digits_data_dir}', *args)
  _assert_one_line_error(proc, fragment)
  assert not (workdir / 'checkpoints').exists()


def test_every_term_key_can_be_overridden(tmp_path, digits_data_dir):
  """Recipes declare each term's full set of keys, so documented hyperparameters override."""
  proc = conftest.run_cli('kdjax.main', '--config=configs/digits_kd.py:smoke',
                          f'--workdir={tmp_path}', f'--config.data_dir={digits_data_dir}',
                          '--config.num_train_steps=2', '--config.log_every_steps=1',
                          '--config.losses.ce.label_smoothing=0.1',
                          '--config.losses.kd.warmup_epochs=4',
                          '--config.optimizer.warmup_epochs=1')
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_missing_recipe_file_and_bad_recipe_argument(tmp_path):
  proc = conftest.run_cli('kdjax.main', '--config=configs/nope.py', f'--workdir={tmp_path}')
  _assert_one_line_error(proc, 'configs/nope.py')
  proc = conftest.run_cli('kdjax.main', '--config=configs/digits_kd.py:smok',
                          f'--workdir={tmp_path}')
  _assert_one_line_error(proc, "unknown recipe argument 'smok'")


def test_smoke_distillation_metrics_and_export(tmp_path, digits_data_dir):
  workdir, exported = tmp_path / 'run', tmp_path / 'export'
  proc = conftest.run_cli('kdjax.main', '--config=configs/digits_kd.py:smoke',
                          f'--workdir={workdir}', f'--config.data_dir={digits_data_dir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = _records(workdir)
  train_lines = [r for r in records if 'loss' in r]
  evals = [r for r in records if 'split' in r]
  assert train_lines and {'step', 'loss', 'loss/ce', 'loss/kd', 'lr',
                          'examples_per_sec'} <= set(train_lines[-1])
  assert train_lines[-1]['step'] == 20
  assert [(r['model'], r['step']) for r in evals] == [('teacher', 0), ('student', 20)]
  assert all(0 <= r['top1'] <= r['top5'] <= 1 for r in evals)
  assert evals[0]['top1'] > 0.97  # the shipped teacher, on the whole held-out split
  assert list((workdir / 'tensorboard').iterdir())
  step, manager, meta = checkpoint.latest_metadata(str(workdir))
  manager.close()
  shipped, _ = checkpoint.load_exported(meta['config']['teacher']['checkpoint'])
  assert step == 20 and meta['teacher']['sha256'] == checkpoint.tree_hash(shipped)
  assert meta['packages']['jax'] == jax.__version__ and meta['config']['seed'] == 0

  proc = conftest.run_cli('kdjax.export', f'--workdir={workdir}', f'--output={exported}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  variables, meta = checkpoint.load_exported(str(exported))
  assert meta['model'] == 'mlp32' and meta['step'] == 20
  assert set(variables) == {'params'}  # mlp32 has no BatchNorm; nothing else is exported
  want = jax.eval_shape(lambda x: models.get_model('mlp32', num_classes=10).init(
      jax.random.key(0), x), np.zeros((1, 8, 8, 1), np.float32))
  assert jax.tree.structure(jax.tree.map(np.shape, variables['params'])) == jax.tree.structure(
      jax.tree.map(lambda s: s.shape, want['params']))
  # The export is a valid teacher checkpoint for the same architecture.
  loaded, source = checkpoint.load_teacher(str(exported), models.get_model('mlp32',
                                                                           num_classes=10),
                                           (1, 8, 8, 1))
  assert source['sha256'] == meta['sha256']


def test_sigkill_then_same_command_resumes_and_ends_like_an_uninterrupted_run(
    tmp_path, digits_data_dir):
  args = ['--config=configs/digits_teacher.py:smoke', f'--config.data_dir={digits_data_dir}',
          '--config.num_train_steps=400', '--config.checkpoint_every_steps=100',
          '--config.log_every_steps=100']
  straight = tmp_path / 'straight'
  proc = conftest.run_cli('kdjax.main', f'--workdir={straight}', *args)
  assert proc.returncode == 0, proc.stderr[-3000:]

  killed = tmp_path / 'killed'
  cmd = [sys.executable, '-m', 'kdjax.main', f'--workdir={killed}', *args]
  child = subprocess.Popen(cmd, cwd=conftest.ROOT, env=conftest.cli_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = killed / 'checkpoints' / '100'
  deadline = time.time() + 240
  while not first.exists() and child.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert child.returncode == -signal.SIGKILL
  assert not (killed / 'checkpoints' / '400').exists(), 'the run finished before the kill'

  proc = conftest.run_cli('kdjax.main', f'--workdir={killed}', *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Resumed from the checkpoint at step' in proc.stderr
  final = lambda records: [{k: v for k, v in r.items() if k != 'examples_per_sec'}
                           for r in records if r['step'] == 400]
  assert final(_records(killed)) == final(_records(straight))
  # Every step is logged once: what the killed run logged after its checkpoint was rewritten.
  steps = lambda records: [(r['step'], r.get('model')) for r in records]
  assert steps(_records(killed)) == steps(_records(straight))
  assert sorted(os.listdir(killed / 'checkpoints')) == sorted(os.listdir(straight / 'checkpoints'))


@pytest.mark.parametrize('recipe', [pytest.param('kd_r32x4_r8x4', marks=pytest.mark.slow),
                                    'dkd_r32x4_r8x4'])
def test_cifar_recipe_smoke(tmp_path, cifar_data_dir, recipe):
  proc = conftest.run_cli('kdjax.main', f'--config=configs/{recipe}.py:smoke',
                          f'--workdir={tmp_path}', f'--config.data_dir={cifar_data_dir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'RANDOMLY INITIALISED' in proc.stderr
  records = _records(tmp_path)
  assert [r['step'] for r in records if 'loss' in r] == [2, 4, 6, 8]
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
  assert records[-1]['model'] == 'student' and records[-1]['step'] == 8


@pytest.mark.parametrize('recipe, data', [('kd_r32x4_r8x4', 'cifar_data_dir'),
                                          ('dkd_r34_r18', 'imagenet_data_dir')])
def test_full_recipe_without_teacher_checkpoint_stops_at_once(tmp_path, request, recipe, data):
  proc = conftest.run_cli('kdjax.main', f'--config=configs/{recipe}.py', f'--workdir={tmp_path}',
                          f'--config.data_dir={request.getfixturevalue(data)}',
                          '--config.batch_size=8', '--config.eval_batch_size=8')  # tiny data
  _assert_one_line_error(proc, 'teacher.checkpoint is empty')
  assert not (tmp_path / 'checkpoints').exists()


def test_missing_imagenet_says_how_to_prepare_it(tmp_path):
  proc = conftest.run_cli('kdjax.main', '--config=configs/dkd_r34_r18.py:smoke',
                          f'--workdir={tmp_path / "w"}', f'--config.data_dir={tmp_path}')
  _assert_one_line_error(proc, 'python -m kdjax.prepare imagenet2012 --data_dir=')
  assert 'ILSVRC2012_img_train.tar' in proc.stderr


def test_recipe_names_resolve_only_as_names_or_under_configs(tmp_path, monkeypatch):
  from kdjax import cli  # pylint: disable=g-import-not-at-top
  from kdjax import recipes  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)  # no configs/ folder here
  shipped = recipes.path('kd_r34_r18')
  assert cli.resolve_recipe_paths(['p', '--config=kd_r34_r18:smoke', '--workdir=w']) == [
      'p', f'--config={shipped}:smoke', '--workdir=w']
  assert cli.resolve_recipe_paths(['p', '--config=configs/kd_r34_r18.py']) == [
      'p', f'--config={shipped}']
  # A missing file elsewhere stays missing (reported as such), never the shipped recipe.
  assert cli.resolve_recipe_paths(['p', '--config=/mnt/mine/kd_r34_r18.py']) == [
      'p', '--config=/mnt/mine/kd_r34_r18.py']
