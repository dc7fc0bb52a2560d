"""HTTP provider adapters: each turns one outgoing message into the provider's request and reads its answer."""
