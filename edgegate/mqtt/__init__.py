"""MQTT side of the gate: topics, payloads, the durable outbox and the publisher."""
