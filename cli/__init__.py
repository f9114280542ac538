"""The `finetune` command line: config, data, the training loop and reports, over `engine`."""

__version__ = "0.1.0"
