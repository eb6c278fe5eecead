"""Runs that survive: preemption, non-finite steps, damaged checkpoints, shared workdirs, changed
configs, bad values (docs/design.md#failure-and-recovery)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import conftest
from kdjax import checkpoint
from kdjax import train
from kdjax import workdir as workdir_lib
from kdjax.errors import KdjaxError


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _without_speed(records):
  return [{k: v for k, v in r.items() if k != 'examples_per_sec'} for r in records]


# --------------------------------------------------------------------------------------------
# Preemption: SIGTERM / Ctrl-C at random steps, then the same command, until the run is done.
# --------------------------------------------------------------------------------------------

CLI_ARGS = ['--config=configs/digits_teacher.py:smoke', '--config.num_train_steps=300',
            '--config.checkpoint_every_steps=100', '--config.log_every_steps=20']


def _interrupted_run(workdir, data_dir, signum, stops, seed):
  """Runs the CLI, sending `signum` once the log shows each of `stops` random steps; returns
  the steps the stopped runs saved at."""
  rng = random.Random(seed)
  targets = sorted(rng.sample(range(20, 260, 20), stops))
  saved = []
  cmd = [sys.executable, '-m', 'kdjax.main', f'--workdir={workdir}', *CLI_ARGS,
         f'--config.data_dir={data_dir}']
  metrics = os.path.join(workdir, 'metrics.jsonl')
  for target in targets:
    child = subprocess.Popen(cmd, cwd=conftest.ROOT, env=conftest.cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while child.poll() is None and time.time() < deadline:
      if os.path.exists(metrics) and any(r['step'] >= target for r in _records(workdir)
                                         if 'loss' in r):
        break
      time.sleep(0.01)
    child.send_signal(signum)
    _, err = child.communicate(timeout=240)
    assert child.returncode == train.STOP_EXIT_CODES[signum], err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f'kdjax: stopped by {signal.Signals(signum).name} at step'), last
    assert 'Traceback' not in err, err[-3000:]
    saved.append(int(last.split(' at step ')[1].split(';')[0]))
  proc = subprocess.run(cmd, cwd=conftest.ROOT, env=conftest.cli_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return saved


@pytest.mark.parametrize('signum', [signal.SIGTERM,
                                    pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_stopped_at_random_steps_and_resumed_ends_like_an_uninterrupted_run(
    tmp_path, digits_data_dir, signum):
  straight = tmp_path / 'straight'
  proc = conftest.run_cli('kdjax.main', f'--workdir={straight}', *CLI_ARGS,
                          f'--config.data_dir={digits_data_dir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  stopped = tmp_path / 'stopped'
  stops = 2 if signum == signal.SIGTERM else 3  # (the SIGINT case runs with -m slow)
  saved = _interrupted_run(stopped, digits_data_dir, signum, stops=stops, seed=int(signum))
  assert len(saved) == stops and all(0 < s < 300 for s in saved), saved
  # Every train line (means over the same steps) and every eval line is the same.
  assert _without_speed(_records(stopped)) == _without_speed(_records(straight))
  assert not os.path.exists(stopped / workdir_lib.LOCK_FILE)


# --------------------------------------------------------------------------------------------
# Non-finite losses: stop without saving them, or skip and count.
# --------------------------------------------------------------------------------------------


def _diverging_config(data_dir, **overrides):
  config, _ = conftest.load_recipe('digits_kd', 'smoke')
  with config.unlocked():
    config.data_dir = data_dir
    config.optimizer.learning_rate = 1e30  # the first update blows the student up
    config.num_train_steps = 6
    config.checkpoint_every_steps = 1
    config.log_every_steps = 3
    for key, value in overrides.items():
      config[key] = value
  return config


def _latest_params(workdir):
  variables, _ = checkpoint.restore_student(str(workdir))
  return variables, checkpoint.latest_metadata(str(workdir))[0]


def test_a_non_finite_loss_stops_the_run_and_is_never_saved(tmp_path, digits_data_dir):
  with pytest.raises(KdjaxError, match=r'non-finite value at step (\d+): loss/') as error:
    train.train_and_evaluate(_diverging_config(digits_data_dir), str(tmp_path))
  bad_step = int(error.value.args[0].split('at step ')[1].split(':')[0])
  variables, latest = _latest_params(tmp_path)
  assert latest == bad_step - 1
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(variables))
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_FILE)


def test_skip_mode_skips_and_counts_non_finite_updates(tmp_path, digits_data_dir):
  config = _diverging_config(digits_data_dir, on_nonfinite='skip')
  train.train_and_evaluate(config, str(tmp_path))
  lines = [r for r in _records(tmp_path) if 'loss' in r]
  assert [r['step'] for r in lines] == [3, 6]
  assert 0 < lines[0]['skipped_updates'] <= lines[1]['skipped_updates'] <= 5
  variables, latest = _latest_params(tmp_path)
  assert latest == 6 and all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(variables))


# --------------------------------------------------------------------------------------------
# Damaged checkpoints, shared workdirs, changed configs.
# --------------------------------------------------------------------------------------------


def _short_config(data_dir, steps, **overrides):
  config, _ = conftest.load_recipe('digits_kd', 'smoke')
  with config.unlocked():
    config.data_dir = data_dir
    config.num_train_steps = steps
    config.checkpoint_every_steps = 2
    config.keep_checkpoints = 3
    config.log_every_steps = 2
    for key, value in overrides.items():
      config[key] = value
  return config


def _damage(step_dir):
  """Truncates every data file of a checkpoint's state."""
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(3)


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, digits_data_dir):
  straight, damaged = str(tmp_path / 'straight'), str(tmp_path / 'damaged')
  train.train_and_evaluate(_short_config(digits_data_dir, 6), straight)
  train.train_and_evaluate(_short_config(digits_data_dir, 4), damaged)
  _damage(os.path.join(damaged, 'checkpoints', '4'))
  train.train_and_evaluate(_short_config(digits_data_dir, 6), damaged)  # resumes from step 2
  assert [n.split('.')[0] for n in os.listdir(os.path.join(damaged, 'damaged_checkpoints'))] == [
      '4']
  assert sorted(os.listdir(os.path.join(damaged, 'checkpoints')), key=int) == ['2', '4', '6']
  assert _without_speed(_records(damaged)) == _without_speed(_records(straight))
  for step in ('2', '4', '6'):
    _damage(os.path.join(damaged, 'checkpoints', step))
  with pytest.raises(KdjaxError, match='no checkpoint in .* can be restored'):
    train.train_and_evaluate(_short_config(digits_data_dir, 8), damaged)


def test_a_second_run_on_a_workdir_in_use_is_refused(tmp_path, digits_data_dir):
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    with open(tmp_path / workdir_lib.LOCK_FILE, 'w') as f:
      json.dump({'host': socket.gethostname(), 'pid': holder.pid, 'started': time.time()}, f)
    with pytest.raises(KdjaxError, match=f'in use by pid {holder.pid} on {socket.gethostname()}'):
      train.train_and_evaluate(_short_config(digits_data_dir, 2), str(tmp_path))
    assert os.listdir(tmp_path) == [workdir_lib.LOCK_FILE]  # nothing written, lock kept
  finally:
    holder.kill()
    holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, digits_data_dir):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  with open(tmp_path / workdir_lib.LOCK_FILE, 'w') as f:
    json.dump({'host': socket.gethostname(), 'pid': dead.pid, 'started': time.time()}, f)
  train.train_and_evaluate(_short_config(digits_data_dir, 2), str(tmp_path))
  assert (tmp_path / 'checkpoints' / '2').exists()
  assert not (tmp_path / workdir_lib.LOCK_FILE).exists()


def test_a_changed_config_is_refused_on_resume_unless_allowed(tmp_path, digits_data_dir):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_short_config(digits_data_dir, 2), workdir)
  before = _records(workdir)
  with pytest.raises(KdjaxError, match=r'changes training: .*seed: 0 -> 1.*student.model'):
    train.train_and_evaluate(_short_config(digits_data_dir, 4, seed=1,
                                           student={'model': 'cnn4', 'checkpoint': '',
                                                    'dtype': 'float32'}), workdir)
  assert _records(workdir) == before and sorted(os.listdir(os.path.join(workdir,
                                                                        'checkpoints'))) == ['2']
  # Harmless changes (logging, a longer run) are applied.
  train.train_and_evaluate(_short_config(digits_data_dir, 4, log_every_steps=1), workdir)
  assert [r['step'] for r in _records(workdir) if 'loss' in r] == [2, 3, 4]
  train.train_and_evaluate(_short_config(digits_data_dir, 6, seed=1, allow_config_change=True),
                           workdir)
  assert (tmp_path / 'run' / 'checkpoints' / '6').exists()
  # A run saved with teacher.dtype 'float32' resumes under the default 'auto' (float32 on this
  # CPU) as the same trajectory.
  saved = _short_config(digits_data_dir, 8, seed=1, allow_config_change=False)
  with saved.unlocked():
    saved.teacher.dtype = 'float32'
  train.train_and_evaluate(saved, workdir)
  train.train_and_evaluate(_short_config(digits_data_dir, 10, seed=1), workdir)
  assert (tmp_path / 'run' / 'checkpoints' / '10').exists()


def test_config_changes_are_classified():
  saved = {'seed': 0, 'log_every_steps': 50, 'num_epochs': 10, 'optimizer': {'schedule': 'step'},
           'losses': {'kd': {'temperature': 4.0}}}
  now = {'seed': 0, 'log_every_steps': 10, 'num_epochs': 20, 'optimizer': {'schedule': 'step'},
         'losses': {'kd': {'temperature': 2.0}}}
  trajectory, harmless = workdir_lib.config_changes(saved, now)
  assert trajectory == ['losses.kd.temperature: 4.0 -> 2.0']
  assert harmless == ['log_every_steps: 50 -> 10', 'num_epochs: 10 -> 20']
  cosine = lambda c: {**c, 'optimizer': {'schedule': 'cosine'}}
  trajectory, _ = workdir_lib.config_changes(cosine(saved), cosine(now))
  assert 'num_epochs: 10 -> 20' in trajectory  # the cosine schedule follows the run's length


def test_a_key_added_since_the_run_started_is_no_change_at_its_default():
  # A run saved before kdjax had input.random_erasing resumes; a non-default value is a change.
  defaults = {'seed': 0, 'input': {'image_size': 8, 'random_erasing': 0.0}}
  saved = {'seed': 0, 'input': {'image_size': 8}}
  at_default = {'seed': 0, 'input': {'image_size': 8, 'random_erasing': 0.0}}
  assert workdir_lib.config_changes(saved, at_default, defaults) == ([], [])
  changed = {'seed': 0, 'input': {'image_size': 8, 'random_erasing': 0.25}}
  assert workdir_lib.config_changes(saved, changed, defaults)[0] == [
      'input.random_erasing: 0.0 -> 0.25']


def test_a_loss_hyperparameter_added_since_the_run_started_is_no_change_at_its_default():
  # A KD run saved before kd had `standardize` resumes; switching it on is a change.
  saved = {'seed': 0, 'losses': {'kd': {'weight': 0.9, 'temperature': 4.0}}}
  now = {'seed': 0, 'losses': {'kd': {'weight': 0.9, 'temperature': 4.0, 'standardize': False}}}
  assert workdir_lib.config_changes(saved, now, train.resume_defaults(now)) == ([], [])
  now['losses']['kd']['standardize'] = True
  assert workdir_lib.config_changes(saved, now, train.resume_defaults(now))[0] == [
      'losses.kd.standardize: false -> true']


# --------------------------------------------------------------------------------------------
# Bad values: one KdjaxError at set-up, before anything is written.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('override, fragment', [
    ({'input.image_size': 7}, "images stay 8x8 with input.train_augment='none'"),
    ({'input.image_size': 0}, 'input.image_size must be a positive'),
    ({'input.mean': (0.5, 0.5, 0.5)}, 'input.mean has 3 values but uci_digits images have 1'),
    ({'optimizer.learning_rate': -0.1}, 'optimizer.learning_rate must be a finite number >= 0'),
    ({'losses.kd.temperature': 0.0}, 'losses.kd.temperature must be a positive number'),
    ({'losses.kd.weight': float('nan')}, 'losses.kd.weight must be a finite number'),
    ({'on_nonfinite': 'ignore'}, "on_nonfinite must be 'stop' or 'skip'"),
    ({'input.random_erasing': 1.5}, 'input.random_erasing is a probability, got 1.5'),
    ({'input.randaugment': 'rand-m9-mstd0.5-inc'}, "bad or repeated section 'inc'"),
])
def test_bad_values_fail_at_set_up(tmp_path, digits_data_dir, override, fragment):
  config, _ = conftest.load_recipe('digits_kd', 'smoke')
  with config.unlocked():
    config.data_dir = digits_data_dir
    for key, value in override.items():
      node = config
      *parents, leaf = key.split('.')
      for part in parents:
        node = node[part]
      node[leaf] = value
  with pytest.raises(KdjaxError, match=fragment.replace('(', r'\(').replace(')', r'\)')):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_no_config_flag_is_one_line(tmp_path):
  proc = conftest.run_cli('kdjax.main', f'--workdir={tmp_path}')
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      'kdjax: error: --config is required, e.g. --config=configs/kd_r32x4_r8x4.py')
