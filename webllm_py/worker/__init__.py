"""The worker protocol: ``messages`` (the envelope and kinds), ``handler`` (worker side), ``client`` (page side).

Nothing here imports ``js``: the browser's Worker and GPU glue is in ``host/worker_port.py``.
"""
