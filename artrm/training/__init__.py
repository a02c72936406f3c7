"""Training a run: the loop, its checks, checkpoints and metric writers (`artrm train`)."""
