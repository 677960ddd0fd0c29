"""Code written into exports, for Transformers alone (it never imports autofednlp)."""
