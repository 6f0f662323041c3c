"""Engine adapters, one module per engine; the contract is in ``node_agent.engines.base``.

Adapters are found through the ``snapctl.engines`` entry points, never imported from here, so
importing this package stays cheap and a third-party adapter is a peer of the built-ins.
"""
