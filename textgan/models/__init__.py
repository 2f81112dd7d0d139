"""Model builders: the generator (a transformers causal LM) and the discriminators."""

from .discriminator import CNNDiscriminator, TokenDiscriminator, build_discriminator
from .generator import build_generator, causal_lm_logits, export_generator, load_generator, token_logprobs

__all__ = [
    "CNNDiscriminator",
    "TokenDiscriminator",
    "build_discriminator",
    "build_generator",
    "causal_lm_logits",
    "export_generator",
    "load_generator",
    "token_logprobs",
]
