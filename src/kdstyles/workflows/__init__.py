"""Many runs: one run of a comparison brought to its end (``runs``), comparisons of recipes over
seeds and the demo (``compare``), Optuna searches (``tune``), and runs as scheduler jobs
(``launch``)."""
