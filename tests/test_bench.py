"""The benchmark measures all four throughputs and their ratio (numbers are not asserted), and
the bytes one device holds of the teacher and of the train state."""

import math

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
