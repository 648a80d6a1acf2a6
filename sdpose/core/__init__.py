"""Conventions every layer shares: keypoints, person boxes, the heatmap codec, the paths.

Nothing here imports a stage; data, models, training, evaluation, export and deploy all
import it (docs/ARCHITECTURE.md, layout).
"""
