"""Training: the loop (step, monitor, validation, checkpoints), several processes, resumable sampling, run folders, the demo."""
