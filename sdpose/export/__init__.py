"""The `export` stage: builds and measures what ships, and hands the registry its verdict.

stage.py is the stage (choose the checkpoint, export, measure, register); onnx.py writes
and parity-checks the file; forms.py measures the fp32 and int8 forms (latency.py on every
runtime, onnx_ap.py their AP, quantize.py the int8 file, int8_gate.py whether it ships);
card.py writes what the file is and where it came from.
"""
