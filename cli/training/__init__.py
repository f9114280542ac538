"""The parts of a training run, which the verbs call: build (config -> model, optimizer,
scheduler), loop (the seed's loop), run_folder (what a run writes and resumes from), progress
(bars or plain lines) and features (a frozen backbone's cached features)."""
