"""Second copies of the repository in another place: the copy itself, what it holds, how far it lags.

A copy is a repository of the same format. With the same master key (`key: shared`, the
default) its objects are the primary's sealed objects, byte for byte, and the same passphrase
or key file opens it; with keys of its own (`key: own`) every object is authenticated, then
sealed again under the copy's key and chunks get the copy's own keyed ids (crmops.copy.reseal).
Every reading command opens it with `--repository NAME`.
"""
