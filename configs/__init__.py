"""The recipes: one file each, `get_config(arg)`. Installed as `kdjax.configs`; load them by name
with `kdjax.recipes.get(name, arg)` or from the command line with `--config=configs/<name>.py`."""
