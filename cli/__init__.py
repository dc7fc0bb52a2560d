"""`xsell`: the operator CLI, a client of the gateway's gRPC API."""
