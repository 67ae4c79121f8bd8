"""Caption cleaning, tokenisation and MLM masking."""
from .cleaning import clean_caption
from .encoder import TextEncoder
from .masking import mask_tokens

__all__ = ["clean_caption", "TextEncoder", "mask_tokens"]
