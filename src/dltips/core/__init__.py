"""Plumbing shared by every theme: argument validation, the device rule, state kept across a block,
deadlines, atomic writes and the callback protocol of `dltips.fit`.

Nothing here knows about tips; every other module may import from here, and this package imports
no other part of dltips.
"""
