"""Runtime: backends (torch, ONNX Runtime, TensorRT), sources, the threaded pipeline, rendering."""
