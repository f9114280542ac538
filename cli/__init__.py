"""The `finetune` command line: config, data, the training loop and reports, over `engine`."""
