"""Small local HTTP servers answering the exact wire formats of servers that can't be installed here.

- ``json_http``: the common part of the cloud fakes (JSON over HTTP, injectable faults).
- ``engine_http``: the common part of the engine fakes (``questdb``, ``dingodb``, ``aresdb``),
  including a mode that accepts connections and never answers.

Every fake listens on 127.0.0.1 only, on a port the OS picks, and is a context manager.
"""
