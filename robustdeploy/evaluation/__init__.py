"""The evaluation core: session (opened once), craft (the only place that crafts), grid (the 8-bit threat model),
score (the one score), results (one shape, save / load), classify (craft + score, windowed), checks, shards.
Every kind of evaluation is a short plan over it, in `robustdeploy.evaluation.plans`."""
