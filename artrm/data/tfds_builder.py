"""Fixed copy / reverse / addition splits as a TFDS dataset, built locally as ArrayRecord.

Training itself samples fresh rows on device (`tasks.sample_batch`); this
dataset is for frozen, shareable splits and for inspecting data. Each split is
`tasks.eval_digits(task, L, size, SPLIT_SEEDS[split])`, so the validation and
test splits are exactly `tasks.eval_set(task, L, size, seed)` for seeds 1 and
2 (and any prefix of a split is the eval set with a smaller n). Split sizes are
class attributes so tests can shrink them; changing them needs a fresh
data_dir, since TFDS keys prepared data by name and version only.
"""

import dataclasses

import numpy as np

try:
  from etils import epath
  import tensorflow_datasets as tfds
except ImportError as e:  # an extra: training and evaluation never import this module
  raise ImportError('artrm.data.tfds_builder needs TFDS: pip install -e ".[tfds]".') from e

from artrm.data import tasks as tasks_lib

LENGTHS = (2, 5, 10, 20, 30, 40, 50)
SPLIT_SEEDS = {'train': 0, 'validation': 1, 'test': 2}


@dataclasses.dataclass
class AlgorithmicConfig(tfds.core.BuilderConfig):
  task: str = 'copy'
  length: int = 10


def config_name(task: str, L: int) -> str:
  return f'{task}_L{L}'


class ArtrmAlgorithmic(tfds.core.GeneratorBasedBuilder):
  """Copy, reverse and addition at one length per config, e.g. `addition_L10`."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
    AlgorithmicConfig(name=config_name(task, L), task=task, length=L)
    for task in tasks_lib.TASKS
    for L in LENGTHS
  ]
  SPLIT_SIZES = {'train': 10_000, 'validation': 1_000, 'test': 1_000}
  # TFDS 4.9.10 derives this through `importlib_resources`, which it does not
  # install on Python >= 3.9; naming the file directly avoids that import.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    task = tasks_lib.get_task(self.builder_config.task)
    L = self.builder_config.length
    int_sequence = lambda n: tfds.features.Tensor(shape=(n,), dtype=np.int32)
    return tfds.core.DatasetInfo(  # not dataset_info_from_configs: no metadata files to look up
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'prompt': int_sequence(task.prompt_len(L)),
          'answer': int_sequence(task.answer_len(L)),
          'inputs': int_sequence(task.seq_len(L)),
          'targets': int_sequence(task.seq_len(L)),
          'text': tfds.features.Text(),
        }
      ),
      supervised_keys=('prompt', 'answer'),
      disable_shuffling=True,  # keeps record i == eval_set row i
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated, nothing is downloaded
    return {split: self._generate_examples(split) for split in self.SPLIT_SIZES}

  def _generate_examples(self, split: str):
    task_name, L = self.builder_config.task, self.builder_config.length
    size, seed = self.SPLIT_SIZES[split], SPLIT_SEEDS[split]
    digits_SxNxL = tasks_lib.eval_digits(task_name, L, size, seed)
    prompts_SxP, answers_SxA = tasks_lib.eval_set(task_name, L, size, seed)
    rows = tasks_lib.python_rows(task_name, digits_SxNxL)
    for i in range(size):
      yield (
        i,
        dict(
          prompt=prompts_SxP[i],
          answer=answers_SxA[i],
          inputs=rows['inputs'][i],
          targets=rows['targets'][i],
          text=tasks_lib.format_example(task_name, digits_SxNxL[i]),
        ),
      )


def load_split(task: str, L: int, split: str, data_dir: str):
  """Random-access source for one split, preparing it under data_dir on first use.

  Records are dicts of int32 arrays plus `text` as UTF-8 bytes.
  """
  tasks_lib.get_task(task, L)
  if L not in LENGTHS:
    raise ValueError(f'No {task} config for L={L}; built lengths: {list(LENGTHS)}.')
  if split not in SPLIT_SEEDS:
    raise ValueError(f'Unknown split {split!r}; known splits: {sorted(SPLIT_SEEDS)}.')
  builder = ArtrmAlgorithmic(
    config=config_name(task, L), data_dir=data_dir, file_format='array_record'
  )
  builder.download_and_prepare()
  return builder.as_data_source(split=split)
