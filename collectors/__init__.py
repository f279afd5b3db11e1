"""Device-facing protocol adapters: packet or PDU in, typed event out to Kafka."""
