"""The TFDS builder prepares ArrayRecord splits locally, without TensorFlow, equal to the eval sets."""

import numpy as np
import pytest

from artrm.data import eval_digits, eval_set, format_example, python_rows
from artrm.data.tasks import TASKS

pytest.importorskip('tensorflow_datasets', reason='the TFDS extra: pip install -e ".[tfds]"')
from artrm.data.tfds_builder import LENGTHS, SPLIT_SEEDS, ArtrmAlgorithmic, load_split  # noqa: E402

SIZES = {'train': 12, 'validation': 4, 'test': 6}


@pytest.fixture
def tiny_splits(monkeypatch):
  monkeypatch.setattr(ArtrmAlgorithmic, 'SPLIT_SIZES', SIZES)


def test_copy_L5_builds_and_reads_back_as_eval_set(tiny_splits, tmp_path):
  builder = ArtrmAlgorithmic(config='copy_L5', data_dir=str(tmp_path), file_format='array_record')
  builder.download_and_prepare()
  assert {name: info.num_examples for name, info in builder.info.splits.items()} == SIZES
  ds = builder.as_data_source(split='test')
  assert len(ds) == SIZES['test']
  prompts, answers = eval_set('copy', 5, SIZES['test'], SPLIT_SEEDS['test'])
  rows = python_rows('copy', eval_digits('copy', 5, SIZES['test'], SPLIT_SEEDS['test']))
  for i in (0, len(ds) - 1):
    record = ds[i]
    np.testing.assert_array_equal(record['prompt'], prompts[i])
    np.testing.assert_array_equal(record['answer'], answers[i])
    np.testing.assert_array_equal(record['inputs'], rows['inputs'][i])
    np.testing.assert_array_equal(record['targets'], rows['targets'][i])
    digits_NxL = eval_digits('copy', 5, SIZES['test'], SPLIT_SEEDS['test'])[i]
    assert record['text'].decode() == format_example('copy', digits_NxL)
  assert record['inputs'].dtype == np.int32 and record['inputs'].shape == (11,)


def test_load_split_reuses_prepared_data_and_validates(tiny_splits, tmp_path):
  validation = load_split('addition', 2, 'validation', str(tmp_path))
  prompts, _ = eval_set('addition', 2, SIZES['validation'], SPLIT_SEEDS['validation'])
  np.testing.assert_array_equal(
    np.stack([validation[i]['prompt'] for i in range(len(validation))]), prompts
  )
  assert len(load_split('addition', 2, 'train', str(tmp_path))) == SIZES['train']
  with pytest.raises(ValueError, match='known splits'):
    load_split('addition', 2, 'dev', str(tmp_path))
  with pytest.raises(ValueError, match=r'built lengths: \[2, 5, 10'):
    load_split('addition', 3, 'test', str(tmp_path))


def test_configs_cover_every_task_and_length():
  names = {config.name for config in ArtrmAlgorithmic.BUILDER_CONFIGS}
  assert names == {f'{task}_L{L}' for task in TASKS for L in LENGTHS}
