"""conva-mlx: find and steer the human values inside language models (ConVA), in MLX."""

__version__ = "0.1.0"
