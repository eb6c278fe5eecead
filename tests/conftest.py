"""Shared fixtures: prepared datasets in temporary TFDS data dirs (never ~/tensorflow_datasets)."""

import os
import subprocess
import sys

import pytest

# torchvision (and timm, which imports it) segfaults in its triton import when TensorFlow is
# already loaded in the process; the parity tests use them, so they go first when installed.
try:
  import timm  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
except ImportError:
  pass

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


def cifar_pair_config(data_dir, losses, **overrides):
  """The kd_r32x4_r8x4 smoke recipe on the mismatched pair resnet8x4 (teacher; 64/128/256
  channels) -> resnet20 (student; 16/32/64), with the given loss terms."""
  config, _ = load_recipe('kd_r32x4_r8x4', 'smoke')
  with config.unlocked():
    config.data_dir = data_dir
    config.student.model = 'resnet20'
    config.teacher.model = 'resnet8x4'
    config.losses = losses
    for key, value in overrides.items():
      config[key] = value
  return config


class Run:
  """The shared set-up of trainer tests: the built run, a fresh state and the teacher placed
  over every device (replicated unless the config shards them), the train batches from step 0
  and the compiled train step."""

  def __init__(self, config, seed=0):
    from kdjax import train  # pylint: disable=g-import-not-at-top
    from kdjax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    self.config = config
    self.setup = train.build(config)
    self.mesh = train.make_mesh()
    self.state = train.create_state(self.setup, self.mesh, seed)
    data = self.setup.data
    self.teacher = train.place_teacher(self.setup, self.mesh)
    self.batches = input_pipeline.train_batches(
        config, data.builder, start_step=0, local_batch_size=config.batch_size,
        steps_per_epoch=data.steps_per_epoch, unlabeled_builder=data.unlabeled_builder)
    self._step = None

  def global_batch(self, local_batch):
    """`local_batch` on the mesh, its uint8 images normalised as the train step does (the step
    leaves float images as they are), so tests can also feed the networks directly."""
    from kdjax import train  # pylint: disable=g-import-not-at-top
    from kdjax.data import on_device  # pylint: disable=g-import-not-at-top
    batch = train.global_batch(local_batch, self.mesh)
    inp = self.setup.config.input
    return {**batch, 'image': on_device.normalize(batch['image'], inp.mean, inp.std)}

  def step(self, local_batch=None):
    """One compiled train step on `local_batch` (default: the next batch); returns metrics."""
    from kdjax import train  # pylint: disable=g-import-not-at-top
    if self._step is None:
      self._step = train.compile_train_step(self.setup, self.mesh)
    local_batch = next(self.batches) if local_batch is None else local_batch
    self.state, metrics = self._step(self.state, self.teacher, self.global_batch(local_batch))
    return metrics
