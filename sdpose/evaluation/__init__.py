"""The `evaluate` stage and the one inference path it shares with training and predict.

stage.py is the stage (`sdpose evaluate`: every cycle's COCO AP, cost, latency, the
report); inference.py turns heatmaps into scored COCO results (flip test, DARK, OKS-NMS);
coco_ap.py scores them with pycocotools; report.py and visualize.py draw the report.
"""
