"""Runnable recipes: ``python -m textgan.recipes.<name>`` or ``textgan train <name>``.

Each recipe is one explicit training loop over the library's components.
"""

RECIPES = ("scratchgan", "seqgan", "mle", "style_transfer", "classifier")
