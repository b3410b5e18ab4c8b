"""Ray Tune search spaces over config keys (the study driver lives in jobs/tune)."""
