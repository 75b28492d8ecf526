"""The city's side of the wire: what the stored readings mean and how they are served."""
