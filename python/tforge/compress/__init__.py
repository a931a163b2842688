"""Model compression: int8 quantisation (SmoothQuant), calibration, and
safetensors save/load of compressed models."""
from tforge.compress.int8 import Int8Config, quantize_
from tforge.compress.serialization import load_compressed, save_compressed
from tforge.compress.sparsify import Sparse24Config, SparsifyReport, pack_, recover, sparsify_

__all__ = ["Int8Config", "quantize_", "save_compressed", "load_compressed", "Sparse24Config",
           "SparsifyReport", "sparsify_", "recover", "pack_"]
