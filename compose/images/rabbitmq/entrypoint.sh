#!/bin/sh
# Writes the broker's configuration from the environment (its user and password), then runs the broker.
set -eu
: "${RABBITMQ_DEFAULT_USER:?set RABBITMQ_DEFAULT_USER}" "${RABBITMQ_DEFAULT_PASS:?set RABBITMQ_DEFAULT_PASS}"
cat > /etc/rabbitmq/rabbitmq.conf <<CONF
listeners.tcp.default = 5672
default_user = $RABBITMQ_DEFAULT_USER
default_pass = $RABBITMQ_DEFAULT_PASS
loopback_users = none
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 50MB
log.console = true
log.file = false
CONF
exec /usr/lib/rabbitmq/bin/rabbitmq-server
