"""The random-access reader: per-process reads, exact batches whatever the process count, and
resumes that read nothing already consumed.

Processes are simulated in one process through `train_batches(..., process=(p, P))`; the reads
are counted by wrapping `input_pipeline.record_source`. tests/test_multiprocess.py runs real
processes (jax.distributed) on the same reader.
"""

import itertools
import logging

import numpy as np
import pytest

from kdjax import recipes
from kdjax.data import input_pipeline
from kdjax.errors import KdjaxError

BATCH = 96                  # global; 1200 // 96 = 12 steps per epoch
STEPS_PER_EPOCH = 12


@pytest.fixture(scope='module')
def builder(digits_data_dir):
  builder = input_pipeline.get_builder(config_for(digits_data_dir))
  assert builder.info.file_format.value == 'array_record'
  return builder


def config_for(data_dir, **input_overrides):
  config, _ = recipes.digits('')
  config.data_dir = data_dir
  config.batch_size = BATCH
  config.input.update(input_overrides)
  return config


@pytest.fixture()
def reads(monkeypatch):
  """Every record index read through `record_source`, in call order (a list per call)."""
  calls = []
  original = input_pipeline.record_source

  def counting(builder, split):
    read = original(builder, split)

    def counted(indices):
      calls.append(np.asarray(indices).copy())
      return read(indices)
    counted.size = read.size
    return counted
  monkeypatch.setattr(input_pipeline, 'record_source', counting)
  return calls


def batches(config, builder, *, process=(0, 1), start_step=0, n=STEPS_PER_EPOCH):
  local = config.batch_size // process[1]
  it = input_pipeline.train_batches(config, builder, start_step=start_step,
                                    local_batch_size=local, steps_per_epoch=STEPS_PER_EPOCH,
                                    process=process)
  return list(itertools.islice(it, n))


def test_epoch_order_is_a_pure_permutation_per_seed_and_epoch():
  order = input_pipeline.epoch_order(0, 0, 1000)
  np.testing.assert_array_equal(np.sort(order), np.arange(1000))
  np.testing.assert_array_equal(order, input_pipeline.epoch_order(0, 0, 1000))
  assert not np.array_equal(order, input_pipeline.epoch_order(0, 1, 1000))
  assert not np.array_equal(order, input_pipeline.epoch_order(1, 0, 1000))
  # Fixed by kdjax's own hash, not a library's generator: the same numbers in every version.
  np.testing.assert_array_equal(input_pipeline.epoch_order(0, 0, 10),
                                [7, 4, 8, 2, 0, 9, 3, 1, 5, 6])


def test_process_positions_are_the_rows_of_each_global_batch():
  got = input_pipeline.process_positions(process=(1, 4), batch=2, first_batch=3, num_batches=5)
  np.testing.assert_array_equal(got, [[26, 27], [34, 35]])  # global batch 8: rows 2, 3


@pytest.mark.parametrize('num_processes', [2, 3])
def test_processes_read_their_share_and_make_the_one_process_batches(
    digits_data_dir, builder, reads, num_processes):
  config = config_for(digits_data_dir, train_augment='crop_flip', crop_padding=1)
  whole = batches(config, builder)
  reads.clear()
  per_process, read_per_process = [], []
  for p in range(num_processes):
    per_process.append(batches(config, builder, process=(p, num_processes)))
    read_per_process.append(np.concatenate(reads))
    reads.clear()
  # Each process read its own 1/P of the epoch's records, once each, and nothing else.
  used = STEPS_PER_EPOCH * BATCH
  for read in read_per_process:
    assert len(read) == used // num_processes
    assert len(np.unique(read)) == len(read)
  everything = np.concatenate(read_per_process)
  assert len(np.unique(everything)) == used
  np.testing.assert_array_equal(
      np.sort(everything), np.sort(input_pipeline.epoch_order(config.seed, 0, 1200)[:used]))
  # Concatenated in process order, the local batches are the one-process batches, exactly.
  for step in range(STEPS_PER_EPOCH):
    for key in whole[step]:
      np.testing.assert_array_equal(
          np.concatenate([b[step][key] for b in per_process]), whole[step][key], err_msg=key)


def test_a_resume_reads_only_what_it_yields(digits_data_dir, builder, reads):
  config = config_for(digits_data_dir)
  full = batches(config, builder, n=STEPS_PER_EPOCH + 2)
  order = input_pipeline.epoch_order(config.seed, 0, 1200)
  for start in (1, 7, 11):
    reads.clear()
    resumed = batches(config, builder, start_step=start, n=STEPS_PER_EPOCH - start)
    read = np.concatenate(reads)
    # The records of the steps before `start` are never read; the rest once each.
    np.testing.assert_array_equal(np.sort(read),
                                  np.sort(order[start * BATCH:STEPS_PER_EPOCH * BATCH]))
    for got, want in zip(resumed, full[start:]):
      np.testing.assert_array_equal(got['id'], want['id'])
      np.testing.assert_array_equal(got['image'], want['image'])
  # Into the next epoch: a new order, from its first record.
  resumed = batches(config, builder, start_step=STEPS_PER_EPOCH + 1, n=1)[0]
  np.testing.assert_array_equal(resumed['id'], full[STEPS_PER_EPOCH + 1]['id'])


def test_the_dataset_index_is_the_record_index(digits_data_dir, builder):
  """input.add_index (CRD's memory rows): the example's index in the split, unique, in range."""
  config = config_for(digits_data_dir, add_index=True)
  got = batches(config, builder, n=STEPS_PER_EPOCH)
  index = np.concatenate([b['index'] for b in got])
  assert len(np.unique(index)) == len(index) and index.min() >= 0 and index.max() < 1200
  order = input_pipeline.epoch_order(config.seed, 0, 1200)
  np.testing.assert_array_equal(index, order[:len(index)])


def test_eval_splits_between_processes_exactly(digits_data_dir, builder):
  config = config_for(digits_data_dir)
  ids = []
  for p in range(3):
    got = list(input_pipeline.eval_batches(config, builder, local_batch_size=64, process=(p, 3)))
    assert len(got) == 4  # ceil(ceil(597 / 3) / 64): the same count on every process
    ids.extend(b['label'][b['mask'] > 0] for b in got)
  one = list(input_pipeline.eval_batches(config, builder, local_batch_size=64))
  np.testing.assert_array_equal(np.concatenate(ids),
                                np.concatenate([b['label'][b['mask'] > 0] for b in one]))


def test_array_record_is_read_by_index_only(digits_data_dir, builder):
  config = config_for(digits_data_dir, reader='sequential')
  with pytest.raises(KdjaxError, match="input.reader='auto'"):
    input_pipeline.check_options(config, builder, None)


def test_random_access_needs_an_array_record_dataset(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.builder('uci_digits', data_dir=str(tmp_path), file_format='tfrecord').download_and_prepare()
  config = config_for(str(tmp_path), reader='random_access')
  builder = input_pipeline.get_builder(config)
  with pytest.raises(KdjaxError, match='python -m kdjax.prepare uci_digits'):
    input_pipeline.check_options(config, builder, None)
  config.input.reader = 'sequential'
  input_pipeline.check_options(config, builder, None)
  assert not input_pipeline.random_access(config, builder)
  config.input.reader = 'grain'
  with pytest.raises(KdjaxError, match='input.reader must be one of'):
    input_pipeline.check_options(config, builder, None)


def test_several_processes_on_tfrecord_warn_once(tmp_path, caplog, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.builder('uci_digits', data_dir=str(tmp_path), file_format='tfrecord').download_and_prepare()
  config = config_for(str(tmp_path))
  builder = input_pipeline.get_builder(config)
  with caplog.at_level(logging.WARNING, logger='kdjax'):
    input_pipeline.warn_about_sequential_reads(config, builder)  # one process: silent
    assert not caplog.records
    monkeypatch.setattr(input_pipeline.jax, 'process_count', lambda: 4)
    input_pipeline.warn_about_sequential_reads(config, builder)
  assert len(caplog.records) == 1
  assert 'reads the whole split' in caplog.text and 'kdjax.prepare uci_digits' in caplog.text


def test_labelled_rows_first_gives_the_one_process_row_order():
  """Two processes of 3 labelled + 1 unlabeled rows each: the step reorders the global batch
  [lab_0, unl_0, lab_1, unl_1] into one process's [lab_0, lab_1, unl_0, unl_1]."""
  from kdjax import train  # pylint: disable=g-import-not-at-top
  rows = np.array([0, 1, 2, 10, 3, 4, 5, 11])  # 10, 11: the unlabeled rows
  batch = {'label': rows, 'image': np.stack([rows, -rows], axis=1)}
  got = train.labelled_rows_first(batch, 2, 3)
  np.testing.assert_array_equal(got['label'], [0, 1, 2, 3, 4, 5, 10, 11])
  np.testing.assert_array_equal(got['image'][:, 1], -np.array([0, 1, 2, 3, 4, 5, 10, 11]))


def test_prepare_keeps_a_dataset_stored_in_the_other_format(tmp_path):
  from kdjax import prepare  # pylint: disable=g-import-not-at-top
  builder = prepare.prepare_tfds('uci_digits', str(tmp_path), None, file_format='tfrecord')
  assert builder.info.file_format.value == 'tfrecord'
  again = prepare.prepare_tfds('uci_digits', str(tmp_path), None)  # default: array_record
  assert again.info.file_format.value == 'tfrecord'
  assert 'as tfrecord' in prepare.describe_tfds(again)
