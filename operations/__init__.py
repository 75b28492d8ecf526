"""The operator's and developer's tools: the fleet view, the fleet simulator, the demos and the
Mosquitto launcher for tests and demos. The daemon (edge_node) never imports this package."""
