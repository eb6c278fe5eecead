"""The benchmark measures all four throughputs and their ratio (numbers are not asserted), and
the bytes one device holds of the teacher and of the train state."""

import json
import math
import os
import subprocess
import sys
import time

import pytest

from kdjax import bench
from kdjax.quickstart import load_recipe


def test_benchmark_reports_every_throughput(digits_data_dir):
  config = load_recipe('smoke')
  with config.unlocked():
    config.data_dir = digits_data_dir
  results = bench.benchmark(config, steps=2)
  for key in ('student_step', 'teacher_forward', 'distill_step', 'input_pipeline',
              'distill_over_sum'):
    assert results[key] > 0 and math.isfinite(results[key]), key
  for name in ('teacher', 'state'):  # One device: what it holds is the replicated copy.
    assert results[f'{name}_bytes_per_device'] == results[f'{name}_bytes_replicated'] > 0, name
  table = bench.format_table(results)
  assert 'distillation step' in table and 'images/s' in table
  assert 'teacher variables' in table and 'MiB per device' in table


def test_measure_alternates_and_reports_ratios_and_load():
  calls = []

  class FakeReference:
    process = type('P', (), {'pid': os.getpid()})()

    def timer(self, kind, steps):
      return lambda: calls.append(('torch', kind, steps)) or 0.5

  timers = {'student_step': lambda: calls.append(('kdjax', 'student_step')) or 0.25,
            'teacher_forward': lambda: calls.append(('kdjax', 'teacher_forward')) or 0.1,
            'distill_step': lambda: calls.append(('kdjax', 'distill_step')) or 0.4}
  out = bench.measure(timers, FakeReference(), batch_size=32, rounds=2, steps=3)
  # Each round times kdjax then PyTorch on every kind, in order.
  assert calls[:2] == [('kdjax', 'student_step'), ('torch', 'student_step', 3)]
  assert len(calls) == 12
  assert out['student_step'] == 128 and out['torch_student_step'] == 64
  assert out['ratio_student_step'] == 2.0
  assert math.isclose(out['distill_over_sum'], 0.4 / 0.35)
  assert out['other_load'] >= 0 and out['rounds'] == 2
  table = bench.format_table({'devices': 1, 'device_kind': 'cpu', 'config_batch_size': 32,
                              'steps': 3, 'torch_version': 'x', 'torch_threads': 2, **out})
  assert '2.00x' in table and 'PyTorch' in table
  assert 'teacher.cache' not in table
  cached = bench.format_table({'devices': 1, 'device_kind': 'cpu', 'config_batch_size': 32,
                               'steps': 3, 'torch_version': 'x', 'torch_threads': 2,
                               'teacher_outputs': 'cache', **out})
  assert 'PyTorch runs its teacher online' in cached  # a cached step is labelled as such


def test_other_load_sees_a_busy_process():
  busy = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
  try:
    time.sleep(0.5)
    _, load = bench.other_load(lambda: time.sleep(1.0), [])
  finally:
    busy.kill()
  assert load > 0.5  # the spinning process kept about one core busy


def test_torch_reference_step_runs(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('torchvision')
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(bench.__file__))),
                        'benchmarks', 'torch_reference.py')
  proc = subprocess.run([sys.executable, script, '--student=resnet18', '--teacher=resnet18',
                         '--num_classes=10', '--batch=2', '--image_size=32', '--steps=1',
                         '--threads=1'], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for kind in ('student_step', 'teacher_forward', 'distill_step'):
    assert kind in proc.stdout


def test_profile_step_times_the_steps_convolutions():
  """benchmarks/profile_step.py --convs finds the train step's forward and gradient convolutions
  in its jaxpr and times them alone (CIFAR ResNet-8: 9 forward convs, the stem, 6 in blocks and
  2 downsampling; 9 weight gradients; 8 input gradients, as the image needs none)."""
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(bench.__file__))),
                        'benchmarks', 'profile_step.py')
  proc = subprocess.run([sys.executable, script, '--what=student', '--model=resnet8',
                         '--batch=2', '--image_size=16', '--steps=1', '--convs'],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  step, convs = [json.loads(line) for line in proc.stdout.strip().splitlines()[-2:]]
  assert step['images_per_s'] > 0
  assert convs['convolutions'] == 26 and convs['conv_ms'] > 0
  assert convs['images_per_s_if_only_convs'] > 0
