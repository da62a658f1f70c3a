#!/bin/sh
# nginx resolves the gateways' service name through the container network's DNS server (the one in
# /etc/resolv.conf) every few seconds, so replicas that come, go or restart with a new address are followed.
set -eu
resolver=$(awk '/^nameserver/ { print $2; exit }' /etc/resolv.conf)
sed -e "s/@RESOLVER@/$resolver/" -e "s/@UPSTREAM@/${CHAT_GATEWAY_UPSTREAM:-gateway:8000}/" \
  /etc/nginx/nginx.conf.template > /run/nginx/nginx.conf
exec nginx -c /run/nginx/nginx.conf -g 'daemon off;'
