"""Training loops and their infrastructure (checkpoints, distributed set-up, logging)."""
