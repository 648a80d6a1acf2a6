"""The `train` stage: SDPose self-distillation trained data-parallel with Ray Train.

stage.py is the entry (`run(params, workdir, resume=False)`), launcher.py the stage (Ray
Train, paths, outputs); the per-worker loop is in loop.py, validation (flip test, decoding,
COCO AP of student and teacher) in validate.py, the learning-rate schedule in schedule.py
and the metrics files in history.py.
"""
