"""The shipped student: its runtimes, its int8 form, the registry and `sdpose predict`.

runtimes.py opens an ONNX file on onnxruntime or OpenVINO; latency.py measures it;
quantize.py writes the int8 form; registry.py keeps versions in MLflow; predict.py runs
a registered or exported file on images.
"""
