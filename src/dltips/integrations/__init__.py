"""dltips inside other training loops: Lightning, the Hugging Face Trainer, torchrun scripts.

`session.Session` is what the adapters share; `lightning` and `transformers` hold
the callbacks, each importing its library only when used (install `dltips[lightning]`
or `dltips[transformers]`).
"""
