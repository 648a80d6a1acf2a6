"""The `evaluate` stage and the one inference and scoring path every AP comes from.

valset.py is the val set and the COCO figures of any runner on it (PyTorch or ONNX);
inference.py turns a head's outputs into scored COCO results (flip test, decoding,
OKS-NMS); coco_ap.py scores them with pycocotools; heldout.py scores any COCO-format set;
report.py and visualize.py draw the report; stage.py only runs the stage.
"""
