"""Export: torch → ONNX (with metadata and parity), ONNX → TensorRT engine, fidelity reports."""
