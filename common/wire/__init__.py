"""What goes over the wire: the weight codec, the protocol messages, chunk assembly, integrity (HMACs), guarded JSON."""
