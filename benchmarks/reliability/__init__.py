"""Reliability: kills at random moments (chaos) and the seeded chaos soak."""
