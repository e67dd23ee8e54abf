"""NATS pieces shared by the task source and the producer client: connecting, the wire
format, the nats-server process and the machine's shared embedded server."""
