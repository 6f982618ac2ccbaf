"""Following a pipeline instance's calls: the call tracker (one per pipeline, where the switch and the
accelerations meet), the per-step trace records, and the seeded and timed runner the calibrations use."""
