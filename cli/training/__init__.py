"""The parts of a training run, which the verbs call: build (config -> model, optimizer,
scheduler), loop (the seed's loop), run_folder (what a run writes and resumes from), progress
(bars or plain lines), features (a frozen backbone's cached features), recipe (unfreezing, best
epoch, early stopping), schedule (when the scheduler steps), class_weights, and lr_finder (the
sweep behind `finetune lr-find`)."""
