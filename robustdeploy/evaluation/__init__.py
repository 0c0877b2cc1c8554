"""The evaluation core (session, craft, score, results, checks) and the plans built on it."""
