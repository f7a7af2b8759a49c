"""Per-paper recipes: config builders and paper-specific pieces composed from the core.

* `rethink` — "Rethinking the domain gap" (red-channel pretraining, MEC / SSC fine-tuning,
  source regularisation).
"""
