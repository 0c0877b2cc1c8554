"""The plans: each kind of evaluation (evaluate, detector, defense, patch, compare, check, diff, poisoning, suite)
as a short plan over the core in `robustdeploy.evaluation`; `rescore` re-runs the scorer a result names."""
