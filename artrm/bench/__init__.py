"""`artrm bench`: how fast each rung trains and decodes, and where the time goes.

setups.py      the benchmark settings (sizes, batch, lengths) and each rung's config
flops.py       model FLOPs of a training step by hand; device peaks for MFU
timing.py      compile, time and measure the training step and decoding (`run_benchmark`)
profiling.py   a profiler trace of a few calls, summarised by model region and op kind
formatting.py  markdown tables and the JSON files
"""
