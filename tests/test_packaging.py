"""kdjax as a user gets it from `pip install .` (not editable): used outside any checkout."""

import glob
import os
import subprocess
import sys

import pytest

import conftest


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """PYTHONPATH of a folder holding kdjax installed from a wheel built from this checkout (its
  dependencies come from the running environment)."""
  root = tmp_path_factory.mktemp('wheel')
  wheels, site = root / 'dist', root / 'site'
  build = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
       '-w', str(wheels), conftest.ROOT], capture_output=True, text=True, cwd=root)
  assert build.returncode == 0, build.stderr[-3000:]
  install = subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site),
       *glob.glob(str(wheels / '*.whl'))], capture_output=True, text=True, cwd=root)
  assert install.returncode == 0, install.stderr[-3000:]
  return str(site)


def _run(installed, cwd, *args):
  env = dict(os.environ, PYTHONPATH=installed, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                        env=env, timeout=600)


def test_recipes_load_by_name_from_the_installed_package(installed, tmp_path):
  proc = _run(installed, tmp_path, '-c', (
      'import kdjax, kdjax.recipes as r;'
      'print(kdjax.__file__); print(r.recipe_dir()); print(len(r.names()));'
      "print(r.get('dkd_r34_r18', 'smoke').losses.dkd.beta)"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  package, recipes_dir, count, beta = proc.stdout.split()
  assert package.startswith(installed) and recipes_dir == os.path.join(installed, 'kdjax',
                                                                        'configs')
  assert int(count) == len(glob.glob(os.path.join(conftest.ROOT, 'configs', '[!_]*.py')))
  assert float(beta) == 0.5


def test_the_cli_trains_a_recipe_named_as_in_the_readme_outside_a_checkout(installed, tmp_path,
                                                                            digits_data_dir):
  # `configs/digits_kd.py` does not exist here: the installed recipe of that name is used.
  proc = _run(installed, tmp_path, '-m', 'kdjax.main', '--config=configs/digits_kd.py:smoke',
              f'--workdir={tmp_path / "run"}', f'--config.data_dir={digits_data_dir}',
              '--config.num_train_steps=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.exists(tmp_path / 'run' / 'metrics.jsonl')
  assert 'Traceback' not in proc.stderr
