"""SpineNet + RetinaNet object detection in PyTorch, faithful to Google's reference."""

__version__ = "0.1.0"

from spinenet.registry import create_model, get_config, get_model_info, list_models  # noqa: E402

__all__ = ["__version__", "create_model", "get_config", "get_model_info", "list_models"]
