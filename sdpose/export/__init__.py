"""The `export` stage: the one-cycle student as ONNX, its model card, its registration.

stage.py is the stage (choose the checkpoint, export, measure, register); onnx.py writes
and parity-checks the file; card.py writes what the file is and where it came from.
"""
