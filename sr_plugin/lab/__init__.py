"""The trained model families and what surrounds them: the task they learn and its evaluator, the hand-set text
encoder, loading the shipped folders, the quality and speed-quality runners, the tiny random pipelines of the
tests and the CPU benchmark. Not needed by `apply` or `accelerate`; the product never imports it."""
