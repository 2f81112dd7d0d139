"""Runnable recipes: ``python -m textgan.recipes.<name>`` or ``textgan train <name>``.

Each recipe is one explicit training loop over the library's components.
"""

RECIPES = ("scratchgan", "seqgan", "mle", "style_transfer", "classifier")


def load_recipe(name: str):
    """(the recipe's module, its config dataclass) for a name in :data:`RECIPES`."""
    import importlib

    module = importlib.import_module(f"{__name__}.{name}")
    config = next(value for key, value in vars(module).items()
                  if key.endswith("Config") and isinstance(value, type) and value.__module__ == module.__name__)
    return module, config
