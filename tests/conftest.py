"""Shared fixtures: prepared datasets in temporary TFDS data dirs (never ~/tensorflow_datasets)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory):
  """A data dir holding the embedded uci_digits, prepared once per test session."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from kdjax.data import uci_digits  # noqa: F401  pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds_digits'))
  tfds.builder('uci_digits', data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture(scope='session')
def cifar_data_dir(tmp_path_factory):
  """A data dir holding a small fake cifar100 (random images, the real features and version)."""
  import fake_tfds  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('tfds_cifar'))
  return fake_tfds.prepare('cifar100', data_dir, splits={'train': 96, 'test': 20})


def cli_env():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return env


def run_cli(module, *args, timeout=300):
  """Runs `python -m <module> <args>` from the repository root; returns CompletedProcess."""
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=cli_env(),
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='session')
def imagenet_data_dir(tmp_path_factory):
  """A miniature imagenet2012 (4 synsets), prepared by the real TFDS builder from tar files."""
  import mini_imagenet  # pylint: disable=g-import-not-at-top
  return mini_imagenet.prepare(str(tmp_path_factory.mktemp('tfds_imagenet')))


def load_recipe(name, arg=''):
  """configs/<name>.py's get_config(arg), as the CLI loads it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg), module.__doc__
