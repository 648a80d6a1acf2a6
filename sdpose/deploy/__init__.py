"""What shipped, run and registered: runtimes, `sdpose predict`, the model registry.

runtimes.py opens an ONNX file on onnxruntime or OpenVINO; predict.py runs an exported or
registered file on images; registry.py keeps versions in MLflow and stores the export's
verdicts (it never judges a file). What a file is worth is measured by `sdpose.export`.
"""
