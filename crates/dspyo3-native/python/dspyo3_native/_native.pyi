__version__: str

def kernels() -> list[str]:
    """Names of the kernels compiled into this build."""

def build_info() -> str:
    """One-line description of the native build: crate version and compiled kernels."""
