"""`finetune bench`: ResNet18 workloads timed on the engine and, with --vs-torch, in torch.

cases: what is timed; runner: the rounds of worker processes and their summary; worker and
torch_worker: one measurement per process; profile: per-op times; report: tables and JSON.
"""
