# Shared by scripts/run and scripts/test: installs what is missing and starts private servers on loopback.
# Source it; it defines functions only.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Debian's /usr/sbin/rabbitmqctl switches to the rabbitmq user and its cookie; our node runs as us.
RABBITMQCTL=/usr/lib/rabbitmq/bin/rabbitmqctl

log() { printf '\033[1m[%s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install PKG...: installs the Debian packages that are not installed yet.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing with apt-get: ${missing[*]}"
  as_root apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# free_port: prints a free TCP port on 127.0.0.1 (never one of the default service ports).
free_port() {
  python3 - <<'PY'
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p not in (5672, 5432, 15672, 25672, 8000): print(p); break
PY
}

# wait_port HOST PORT SECONDS
wait_port() {
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.2
  done
}

# start_rabbitmq STATE_DIR PORT: a private RabbitMQ node on 127.0.0.1:PORT with its data under STATE_DIR.
# The node runs in STATE_DIR, so what Erlang writes to its working folder (MnesiaCore.* dumps) stays there.
# Sets RABBIT_NODE and RABBIT_URL.
start_rabbitmq() {
  local dir="$1" port="$2"
  apt_install rabbitmq-server
  mkdir -p "$dir/mnesia" "$dir/log"
  local dist; dist=$(free_port)
  RABBIT_NODE="chat$port@localhost"
  echo "[]." > "$dir/enabled_plugins"  # no plugins: the services use direct, fanout and topic exchanges only
  cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
loopback_users = none
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 50MB
CONF
  RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT="$dist" RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
    RABBITMQ_PID_FILE="$dir/rabbit.pid" ERL_CRASH_DUMP="$dir/log/erl_crash.dump" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    setsid env -C "$dir" /usr/lib/rabbitmq/bin/rabbitmq-server > "$dir/log/stdout.log" 2>&1 &
  echo $! > "$dir/launcher.pid"
  if ! "$RABBITMQCTL" -n "$RABBIT_NODE" wait --timeout 90 "$dir/rabbit.pid" >/dev/null 2>&1; then
    log "RabbitMQ did not start; its log:"; tail -30 "$dir/log/stdout.log" >&2; return 1
  fi
  RABBIT_URL="amqp://guest:guest@127.0.0.1:$port/%2F"
  log "RabbitMQ node $RABBIT_NODE on 127.0.0.1:$port"
}

# rabbitmqctl_node ARGS...: rabbitmqctl against the node that start_rabbitmq started.
rabbitmqctl_node() { "$RABBITMQCTL" -n "$RABBIT_NODE" "$@"; }

stop_rabbitmq() {
  local dir="$1"
  # Every step may find nothing to stop; none may fail the caller (scripts run with set -e).
  if [ -n "${RABBIT_NODE:-}" ]; then "$RABBITMQCTL" -n "$RABBIT_NODE" stop "$dir/rabbit.pid" >/dev/null 2>&1 || true; fi
  if [ -f "$dir/launcher.pid" ]; then kill -- -"$(cat "$dir/launcher.pid")" 2>/dev/null || true; fi
  return 0
}

# start_postgres STATE_DIR PORT: a private PostgreSQL 15 on 127.0.0.1:PORT. Sets PG_URL.
start_postgres() {
  local dir="$1" port="$2" bin=/usr/lib/postgresql/15/bin
  [ -x "$bin/initdb" ] || apt_install postgresql-15
  mkdir -p "$dir"
  local runas=()
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; runas=(runuser -u postgres --); fi
  [ -f "$dir/data/PG_VERSION" ] || "${runas[@]}" "$bin/initdb" -D "$dir/data" -U chat --auth=trust -E UTF8 >/dev/null
  "${runas[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null
  "${runas[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U chat chat 2>/dev/null || true
  PG_URL="postgres://chat@127.0.0.1:$port/chat"
  log "PostgreSQL on 127.0.0.1:$port"
}

stop_postgres() {
  local dir="$1" bin=/usr/lib/postgresql/15/bin runas=()
  [ "$(id -u)" = 0 ] && runas=(runuser -u postgres --)
  if [ -f "$dir/data/postmaster.pid" ]; then "${runas[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true; fi
  return 0
}

# write_nginx_conf DIR HOST PORT GATEWAY_PORT...: the nginx configuration in front of the gateways (HTTP and the
# WebSocket upgrade, round robin, a dead gateway skipped), written to DIR/nginx.conf with every file nginx writes
# under DIR. The tests use it too. max_fails=0: a refused connection moves each request on to the next gateway,
# and no gateway is ever marked down (with max_fails=1, a gateway killed and one draining at once left "no live
# upstreams" for 16 s in the fault suite, though one was up).
write_nginx_conf() {
  local dir="$1" host="$2" port="$3"; shift 3
  mkdir -p "$dir/tmp/body" "$dir/tmp/proxy" "$dir/tmp/fastcgi" "$dir/tmp/uwsgi" "$dir/tmp/scgi"
  local servers="" p
  for p in "$@"; do servers+="    server 127.0.0.1:$p max_fails=0;"$'\n'; done
  cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 8192;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body; proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi; uwsgi_temp_path $dir/tmp/uwsgi; scgi_temp_path $dir/tmp/scgi;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream gateways {
$servers  }
  server {
    listen $host:$port;
    location / {
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_read_timeout 3600s;
      proxy_next_upstream error timeout http_502;
    }
  }
}
CONF
}

# start_nginx DIR HOST PORT GATEWAY_PORT...: Debian's nginx with that configuration, in the background. Sets NGINX_PID.
start_nginx() {
  local dir="$1" host="$2" port="$3"; shift 3
  apt_install nginx-light
  write_nginx_conf "$dir" "$host" "$port" "$@"
  /usr/sbin/nginx -c "$dir/nginx.conf" -p "$dir" -g 'daemon off;' > "$dir/stdout.log" 2>&1 &
  NGINX_PID=$!
  log "nginx on $host:$port in front of gateways on ports $*"
}
