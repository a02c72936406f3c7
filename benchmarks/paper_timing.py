"""Times the paper's PyTorch code; run by `side_by_side.py` with the paper's venv python.

It imports the paper's models and data from its checkout (never a copy of them), so
that its timings come from its own code on the machine `artrm bench` runs on. Usage:

    paper_python paper_timing.py CHECKOUT '<json spec>'

The spec is `artrm bench`'s setup (`artrm.bench.setups.Setup` as a dict: `n_embd`,
`n_head`, `budget`, `batch_size`, `block_size`, `dropout`, `train`, `eval_lengths`)
with `rungs`, `steps`, `warmup` and `eval_n`. Prints one JSON object: `train_ms[rung]`, the median ms of a training step
(forward, backward, AdamW on rows padded to block_size, as its trainer feeds them) and
`eval_ms[L][rung]`, the median ms per sequence of its evaluator (one prompt at a time,
`model.generate`, a full forward per new token). Models are untrained, built as its
length-generalisation script builds them (n_layer 6 adjusted to the budget, ponder
cost weight 0 for the recurrent rungs).
"""

import json
import statistics
import sys
import time

import torch

RECURRENT = ('ut', 'ut_level1', 'ut_level2', 'trm')


def build(rung, spec, vocab_size):
  from models import build_model, normalize_model_kwargs_for_compute

  kwargs = dict(
    vocab_size=vocab_size,
    block_size=spec['block_size'],
    n_embd=spec['n_embd'],
    n_head=spec['n_head'],
    n_layer=6,
    dropout=spec['dropout'],
    lr=3e-4,
  )
  if rung in RECURRENT:
    kwargs['ponder_cost_weight'] = 0.0
  kwargs, _ = normalize_model_kwargs_for_compute(rung, kwargs, compute_budget=spec['budget'])
  return build_model(rung, **kwargs)


def train_ms(model, spec, vocab_size):
  model.train()
  opt = model.configure_optimizers()
  shape = (spec['batch_size'], spec['block_size'])
  x, y = torch.randint(vocab_size, shape), torch.randint(vocab_size, shape)
  times = []
  for i in range(spec['warmup'] + spec['steps']):
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    if i >= spec['warmup']:
      times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def eval_ms(model, task, length, n, tok, make_example):
  gen = torch.Generator().manual_seed(0)
  times = []
  for _ in range(n):
    prompt, _, _ = make_example(task, length, gen)
    x = torch.tensor([tok.encode(prompt)], dtype=torch.long)
    t = time.perf_counter()
    model.generate(x, max_new_tokens=length + 1)
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def main(checkout, spec):
  sys.path.insert(0, checkout)
  from data_modules.algorithmic_char import _build_tokenizer, _make_example

  torch.manual_seed(0)
  tok = _build_tokenizer()
  out = {'torch': torch.__version__, 'threads': torch.get_num_threads(), 'train_ms': {}}
  out['eval_ms'] = {str(L): {} for L in spec['eval_lengths']}
  for rung in spec['rungs']:
    model = build(rung, spec, tok.vocab_size)
    if spec['train']:
      out['train_ms'][rung] = train_ms(model, spec, tok.vocab_size)
    for L in spec['eval_lengths']:
      out['eval_ms'][str(L)][rung] = eval_ms(
        model, spec['task'], L, spec['eval_n'], tok, _make_example
      )
    print(f'paper code: {rung} done', file=sys.stderr, flush=True)
  print(json.dumps(out))


if __name__ == '__main__':
  main(sys.argv[1], json.loads(sys.argv[2]))
