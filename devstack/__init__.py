"""The local stack: NATS with JetStream, the four services and the gateway, as `make run` and the e2e tests start it."""
