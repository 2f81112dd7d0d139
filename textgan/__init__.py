"""textgan: train token-level text generators adversarially.

A Transformer-decoder generator (any ``transformers`` causal LM) is trained against a sequence
discriminator with REINFORCE and reward baselines, SeqGAN- and ScratchGAN-style, with optional
MLE pretraining. See ``textgan.recipes`` for runnable training loops.
"""

__version__ = "0.1.0"
