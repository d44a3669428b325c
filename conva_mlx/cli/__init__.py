"""The `conva-mlx` command line."""
