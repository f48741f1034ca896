"""Pipeline stages. Each stage is a Kafka consumer group; offsets are committed only
after the stage's output is durable (at-least-once, exactly-once in effect through
idempotent writes keyed on Event.id)."""
