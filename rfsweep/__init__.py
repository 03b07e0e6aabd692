"""rfsweep: the formulation and architecture study of Stable Diffusion 3, reproducible and extensible."""

__version__ = "0.1.0"
