"""Model compression: int8 quantisation (SmoothQuant), calibration, and
safetensors save/load of compressed models."""
from tforge.compress.int8 import Int8Config, quantize_
from tforge.compress.serialization import load_compressed, save_compressed

__all__ = ["Int8Config", "quantize_", "save_compressed", "load_compressed"]
