"""The methods a benchmark compares, each building a student of (at least) the same size."""

from .methods import METHODS, MethodContext, build_student, register_method
from .students import width_scaled

__all__ = ["METHODS", "MethodContext", "build_student", "register_method", "width_scaled"]
