from dspyo3_native._native import __version__ as __version__
from dspyo3_native._native import build_info as build_info
from dspyo3_native._native import kernels as kernels
