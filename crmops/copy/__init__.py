"""Second copies of the repository in another place: the copy itself, what it holds, how far it lags.

A copy is a repository of the same format and the same master key (`key: shared`): its
objects are the primary's sealed objects, byte for byte, so every reading command opens it
with `--repository NAME` and needs the same passphrase or key file.
"""
