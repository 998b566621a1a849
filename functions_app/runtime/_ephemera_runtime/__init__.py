"""The runtime's in-sandbox half: the zygote, the isolation steps and the bootstrap that serves the handler.

Stdlib only, and it never imports the worker-side package around it. The zygote imports it from
/var/runtime/_ephemera_runtime (this directory, mounted read-only), so every module a function can see carries a
sandbox path in ``__file__``, and the private name never shadows a function's own ``protocol`` or ``bootstrap``.
"""
