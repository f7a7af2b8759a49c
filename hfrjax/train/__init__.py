"""Training core: mesh, optimizer and schedules, train state, jitted steps, checkpoints,
export, and the trainer loop used by every recipe."""
