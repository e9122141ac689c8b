"""The torch bridge, imported as ``jaxprune.interop``.

Reserved for the torch interop layer (DLPack conversion, pruning torch modules
with torch's own reparametrization, torch <-> Flax weights). The core package
never imports it, and ``import jaxprune`` works without torch installed.
"""

__all__: tuple[str, ...] = ()
