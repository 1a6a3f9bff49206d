"""Training: the stage plan and run config, schedules, batches, the loop, checkpoints."""
