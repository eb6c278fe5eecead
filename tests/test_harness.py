"""The reproduction harness (kdjax.harness, experiments/reproduce.py) and the quickstart on it."""

import json
import logging
import math
import os
import re
import subprocess
import sys

import pytest

import conftest
from kdjax import harness
from kdjax import logs
from kdjax.errors import KdjaxError


def _fake_run(root, entry, seed, top1, *, losses=(2.0, 1.0), ema=False, teacher=None):
  """A finished run's metrics.jsonl and provenance.json, as the trainer writes them."""
  run_dir = harness.workdir(entry, seed, root)
  os.makedirs(run_dir)
  model = 'student_ema' if ema else 'student'
  lines = []
  if teacher is not None:
    lines.append({'step': 0, 'split': 'test', 'model': 'teacher', 'top1': teacher, 'top5': 1.0})
  lines += [{'step': 10 * (i + 1), 'loss': loss, 'lr': 0.1} for i, loss in enumerate(losses)]
  if ema:  # The trained weights score lower than their EMA here: the harness must take the EMA.
    lines += [{'step': 20, 'split': 'test', 'model': 'student', 'top1': top1 - 0.1, 'top5': 0.9}]
  lines += [{'step': 20, 'split': 'test', 'model': model, 'top1': top1,
             'top5': 0.95 if ema else 0.9}]
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(line) + '\n' for line in lines)
  with open(os.path.join(run_dir, 'provenance.json'), 'w') as f:
    json.dump({'config': {'export': 'student', 'ema': {'decay': 0.99 if ema else 0.0}},
               'devices': {'kind': 'cpu', 'count': 1}, 'git_commit': 'abc', 'wall_s': 3.0,
               'sessions': [{'status': 'finished'}]}, f)


def test_expected_numbers_come_from_the_recipes_docstrings():
  assert harness.expected_from_docstring('dkd_r34_r18') == (71.70, 'mdistiller README')
  assert harness.expected_from_docstring('kd_res56_res20')[0] == 70.66
  assert harness.expected_from_docstring('afd_r34_r18') == (None, '')  # "not checked here"
  entries = harness.entries_from_recipes(['dkd_r34_r18', 'digits_kd:baseline'])
  assert [e.label for e in entries] == ['dkd_r34_r18', 'digits_kd:baseline']
  assert entries[1].expected == 92.2  # the docstring's first number


def test_run_names_commands_and_overrides():
  plain = harness.Entry('a', 'digits_kd:baseline')
  tuned = harness.Entry('b', 'digits_kd', overrides={'losses.kd.temperature': 2.0})
  assert harness.run_name(plain) == 'digits_kd-baseline'
  assert re.fullmatch(r'digits_kd-[0-9a-f]{8}', harness.run_name(tuned))
  assert harness.commands([plain, tuned], (0, 1), '/r') == [
      'python -m kdjax.main --config=configs/digits_kd.py:baseline '
      '--workdir=/r/digits_kd-baseline/seed0 --config.seed=0',
      'python -m kdjax.main --config=configs/digits_kd.py:baseline '
      '--workdir=/r/digits_kd-baseline/seed1 --config.seed=1',
      f'python -m kdjax.main --config=configs/digits_kd.py --workdir=/r/{harness.run_name(tuned)}'
      '/seed0 --config.seed=0 --config.losses.kd.temperature=2.0',
      f'python -m kdjax.main --config=configs/digits_kd.py --workdir=/r/{harness.run_name(tuned)}'
      '/seed1 --config.seed=1 --config.losses.kd.temperature=2.0']
  config = harness.config_for(tuned, 7)
  assert config.seed == 7 and config.losses.kd.temperature == 2.0
  with pytest.raises(KdjaxError, match='losses.kd.tmperature'):
    harness.config_for(harness.Entry('c', 'digits_kd', overrides={'losses.kd.tmperature': 1}), 0)


def test_collect_summarize_and_report_from_metrics_files(tmp_path):
  student = harness.Entry('KD', 'digits_kd', expected=90.0, source='somewhere')
  teacher = harness.Entry('teacher', 'digits_kd', model='teacher')
  ema = harness.Entry('EMA', 'digits_ofa', expected=76.32)
  missing = harness.Entry('not run', 'dkd_r34_r18')
  entries = [teacher, student, ema, missing]
  for seed, top1 in enumerate((0.80, 0.84, 0.88)):
    _fake_run(tmp_path, student, seed, top1, teacher=0.98)
    _fake_run(tmp_path, ema, seed, top1 + 0.01, ema=True)
  rows = harness.collect(entries, range(3), str(tmp_path))
  assert [(r['label'], r['model']) for r in rows[:4]] == [
      ('teacher', 'teacher'), ('teacher', 'teacher'), ('teacher', 'teacher'), ('KD', 'student')]
  assert {r['model'] for r in rows if r['label'] == 'EMA'} == {'student_ema'}  # what it exports
  summary = harness.summarize(entries, rows)
  kd = summary[1]
  assert kd['n'] == 3 and math.isclose(kd['top1_mean'], 84.0)
  assert math.isclose(kd['top1_std'], 4.0)  # ddof 1: sqrt((16 + 0 + 16) / 2)
  assert summary[3]['n'] == 0
  table = harness.report(entries, range(3), str(tmp_path), str(tmp_path / 'out'))
  assert table.splitlines()[2:] == [
      '| teacher | 98.0 ± 0.0 | 100.0 ± 0.0 | 3 | - | - |',
      '| KD | 84.0 ± 4.0 | 90.0 ± 0.0 | 3 | 90.0 | somewhere |',
      '| EMA | 85.0 ± 4.0 | 95.0 ± 0.0 | 3 | 76.32 | - |',
      '| not run | - | - | 0 | - | - |']
  for name in ('results.md', 'results.csv', 'runs.csv', 'curves.png', 'comparison.png'):
    assert os.path.getsize(tmp_path / 'out' / name) > 0, name
  with open(tmp_path / 'out' / 'runs.csv') as f:
    assert f.readline().startswith('label,recipe,seed,model,step,top1,top5,finished,git_commit')
  with pytest.raises(KdjaxError, match='no run under'):
    harness.report([missing], range(3), str(tmp_path), str(tmp_path / 'none'))


def test_log_levels_by_logger_name():
  assert logs.levels(None) == (logging.INFO, logging.WARNING)
  assert logs.levels(0) == (logging.INFO, logging.INFO)
  assert logs.levels(-1) == (logging.WARNING, logging.WARNING)
  assert logs.levels(5) == (logging.DEBUG, logging.DEBUG)


def _readme_quickstart_table():
  with open(os.path.join(conftest.ROOT, 'README.md')) as f:
    text = f.read()
  start = text.index('| run | top-1 (%) |')
  return text[start:text.index('\n\n', start)]


def _numbers(table):
  """{label: (top-1 mean, top-1 std)} of a harness table."""
  out = {}
  for line in table.splitlines()[2:]:
    label, top1 = [c.strip() for c in line.strip('|').split('|')][:2]
    mean, _, std = top1.partition(' ± ')
    out[label] = (float(mean), float(std or 0))
  return out


@pytest.mark.slow
def test_the_quickstart_regenerates_the_readme_table_and_plots_in_few_lines(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-m', 'kdjax.quickstart', f'--workdir={tmp_path}'],
                        capture_output=True, text=True, cwd=conftest.ROOT, env=env, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  output = (proc.stdout + proc.stderr).strip().splitlines()
  assert len(output) < 60, '\n'.join(output)
  readme = _readme_quickstart_table()
  with open(tmp_path / 'results.md') as f:
    table = f.read().strip()
  assert table in proc.stdout
  assert table.splitlines()[:2] == readme.splitlines()[:2]
  measured, published = _numbers(table), _numbers(readme)
  assert measured.keys() == published.keys()
  for label, (mean, std) in measured.items():
    # Same code and seeds: equal on the machine the README was measured on; another CPU may
    # round a few of the 597 predictions differently.
    assert abs(mean - published[label][0]) <= 1.0 and abs(std - published[label][1]) <= 1.0, (
        label, table)
  for name in ('curves.png', 'comparison.png', 'results.csv', 'runs.csv'):
    assert os.path.getsize(tmp_path / name) > 0
  # The harness command line collects the same runs into the same table.
  again = subprocess.run(
      [sys.executable, 'experiments/reproduce.py', '--experiment=quickstart', f'--root={tmp_path}',
       f'--out={tmp_path / "again"}', '--collect_only'], capture_output=True, text=True,
      cwd=conftest.ROOT, env=env, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.strip() == table


def test_without_matplotlib_the_report_has_its_tables_and_no_plots(tmp_path, monkeypatch):
  entry = harness.Entry('KD', 'digits_kd')
  _fake_run(tmp_path, entry, 0, 0.9)
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # `import matplotlib` now fails
  table = harness.report([entry], [0], str(tmp_path), str(tmp_path / 'out'))
  assert '| KD | 90.0 |' in table
  assert sorted(os.listdir(tmp_path / 'out')) == ['results.csv', 'results.md', 'runs.csv']


def test_unfinished_runs_are_shown_but_not_averaged(tmp_path):
  entry = harness.Entry('KD', 'digits_kd')
  for seed, top1 in enumerate((0.8, 0.9)):
    _fake_run(tmp_path, entry, seed, top1)
  running = os.path.join(harness.workdir(entry, 1, str(tmp_path)), 'provenance.json')
  with open(running) as f:
    record = json.load(f)
  record['sessions'][-1]['status'] = 'preempted'
  with open(running, 'w') as f:
    json.dump(record, f)
  with open(os.path.join(harness.workdir(entry, 0, str(tmp_path)), 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 30, "lo')  # cut off by a hard kill: skipped
  table = harness.markdown(harness.summarize([entry], harness.collect([entry], (0, 1),
                                                                      str(tmp_path))))
  assert table.splitlines()[2] == '| KD | 80.0 | 90.0 | 1 (+1 unfinished) | - | - |'


def test_a_finished_run_is_kept_and_refused_when_its_recipe_changed(tmp_path, digits_data_dir,
                                                                    monkeypatch):
  entry = harness.Entry('KD', 'digits_kd:smoke', overrides={'data_dir': digits_data_dir,
                                                           'num_train_steps': 4})
  said = []
  harness.run([entry], [0], str(tmp_path), echo=said.append)
  harness.run([entry], [0], str(tmp_path), echo=said.append)
  assert said[1].endswith('(done before, kept)') and said[0].split('(')[0] == said[1].split('(')[0]
  sessions = json.load(open(os.path.join(harness.workdir(entry, 0, str(tmp_path)),
                                         'provenance.json')))['sessions']
  assert [s['status'] for s in sessions] == ['finished']
  original = harness.config_for

  def edited_recipe(e, seed, root='.'):
    config = original(e, seed, root)
    config.optimizer.learning_rate = 0.5  # as if configs/digits_kd.py had been edited
    return config
  monkeypatch.setattr(harness, 'config_for', edited_recipe)
  with pytest.raises(KdjaxError, match='optimizer.learning_rate'):
    harness.run([entry], [0], str(tmp_path), echo=said.append)
