"""Pieces every stage uses: errors, seeding, checkpoints, progress and logging."""
