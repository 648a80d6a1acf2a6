"""The `tune` stage: a Ray Tune search over cycles, embedding size and any other model or
train parameter of `tune.space`, each trial a full Ray Train run of the train stage.

stage.py is the entry (`run(params, workdir, resume=False)`) and search.py the search; the
trial driver and its Ray Train callbacks are in trial.py, the search space and concurrency
in space.py, the per-trial record and Pareto front in results.py, the MLflow runs in
tracking.py.
"""
