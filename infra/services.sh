# shellcheck shell=bash
# Sourced by infra/up after the infrastructure is up (skipped with --infra-only).
# lib.sh helpers are available (start_component, port_open, ...) and the
# variables of infra/.run/endpoints.env are exported.
# infra/down stops whatever start_component started here, before the infrastructure.

# The services run from a release build: they are what load tests measure.
SERVICE_BIN_DIR="$REPO_DIR/target/release"

grpc_serving() { "$SERVICE_BIN_DIR/grpc-health-probe" --ca-file "$TRADING_SECRETS_DIR/ca.pem" "$1" >/dev/null 2>&1; }

# How every gRPC server meets its callers (the EdgeConfig of platform/src/server.rs): TLS with
# the certificate infra/up generated, bearer tokens checked with its public key. Each service
# reads them under its own prefix, and serves its metrics on its own address: edge_env
# WRITE_REGION_ 127.0.0.1:9461 sets EDGE_ENV to (WRITE_REGION_EDGE__TLS_CERT_FILE=... ...), for
# `env "${EDGE_ENV[@]}" binary`.
edge_env() {
    local prefix=$1 metrics=$2
    EDGE_ENV=(
        "${prefix}EDGE__TLS_CERT_FILE=$TRADING_SECRETS_DIR/server.pem"
        "${prefix}EDGE__TLS_KEY_FILE=$TRADING_SECRETS_DIR/server.key"
        "${prefix}EDGE__TOKEN_PUBLIC_KEY_FILE=$TRADING_SECRETS_DIR/token-public.pem"
        "${prefix}EDGE__METRICS_ADDR=$metrics"
    )
    # Spans to Jaeger (traces only: it takes no metrics), flushed every half second so an
    # order's trace is whole moments after it.
    if [[ ${TRACING:-off} == on ]]; then
        EDGE_ENV+=(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=$JAEGER_OTLP_ENDPOINT"
            "OTEL_BSP_SCHEDULE_DELAY=500"
        )
    fi
}

build_services() {
    log "building the services (cargo build --release; the first build takes minutes)"
    (cd "$REPO_DIR" && cargo build --release --locked -p write-region -p relay -p read-region -p platform --bins) ||
        die "services: cargo build failed"
}

start_services() {
    build_services
    edge_env WRITE_REGION_ "$WRITE_METRICS_ADDR"
    # The write region reads its settings from WRITE_REGION_* variables.
    WRITE_REGION_LISTEN_ADDR="$WRITE_ADDR" \
        WRITE_REGION_NATS_LOGIN__USER=write-region \
        WRITE_REGION_NATS_LOGIN__PASSWORD_FILE="$TRADING_SECRETS_DIR/nats-write-region.password" \
        WRITE_REGION_NATS_URL="$NATS_HUB_URL" \
        WRITE_REGION_CASSANDRA_CONTACT_POINTS="[\"${CASSANDRA_CONTACT_POINTS//,/\",\"}\"]" \
        WRITE_REGION_REPLICATION="$STORE_REPLICATION" \
        WRITE_REGION_CONSISTENCY="$STORE_CONSISTENCY" \
        WRITE_REGION_LOCAL_DATACENTER="$STORE_LOCAL_DATACENTER" \
        start_component write-region "${WRITE_ADDR%:*}" "${WRITE_ADDR##*:}" 120 \
        grpc_serving "$WRITE_ADDR" -- env "${EDGE_ENV[@]}" "$SERVICE_BIN_DIR/write-region"
    start_relay relay "$HUB_RELAY_ADDR" "$HUB_RELAY_METRICS_ADDR"
    start_relay relay-2 "$HUB_RELAY_2_ADDR" "$HUB_RELAY_2_METRICS_ADDR"
    start_read_region eu "$READ_EU_ADDR" "$NATS_EU_URL" "$REDIS_EU_URL" "$READ_EU_METRICS_ADDR"
    start_read_region ap "$READ_AP_ADDR" "$NATS_AP_URL" "$REDIS_AP_URL" "$READ_AP_METRICS_ADDR"
}

# start_relay NAME ADDR METRICS_ADDR: one of the relay processes sharing the hub's streams; the one holding
# the lease in the RELAY_LEASE bucket runs the pipeline, the others stand by and take over
# within the lease's time to live when it dies.
start_relay() {
    local name=$1 addr=$2 metrics=$3
    edge_env RELAY_ "$metrics"
    RELAY_LISTEN_ADDR="$addr" \
        RELAY_INSTANCE="$name" \
        RELAY_NATS_LOGIN__USER=relay \
        RELAY_NATS_LOGIN__PASSWORD_FILE="$TRADING_SECRETS_DIR/nats-relay.password" \
        RELAY_NATS_URL="$NATS_HUB_URL" \
        start_component "$name" "${addr%:*}" "${addr##*:}" 120 \
        grpc_serving "$addr" -- env "${EDGE_ENV[@]}" "$SERVICE_BIN_DIR/relay"
}

# read_region_env REGION LEAF_NATS_URL REDIS_URL: sets READ_ENV to the settings of the region's
# read-region process (its leaf, its Redis, its credentials), for `env "${READ_ENV[@]}" binary`:
# the server below and `infra/rebuild` share them.
read_region_env() {
    local region=$1 nats=$2 redis=$3
    local key="$RUN_DIR/secrets/page-token-$region.key"
    # The key the region signs its page tokens with: generated here once, never committed or
    # logged, readable by this user only; it survives restarts so tokens clients hold do too.
    if [[ ! -s $key ]]; then
        (umask 077 && mkdir -p "$RUN_DIR/secrets" && head -c 32 /dev/urandom >"$key")
    fi
    READ_ENV=(
        "READ_REGION_PAGE_TOKEN_KEY_FILE=$key"
        "READ_REGION_REGION=$region"
        "READ_REGION_NATS_LOGIN__USER=read-region"
        "READ_REGION_NATS_LOGIN__PASSWORD_FILE=$TRADING_SECRETS_DIR/nats-read-region.password"
        "READ_REGION_REDIS_LOGIN__USER=read-region-$region"
        "READ_REGION_REDIS_LOGIN__PASSWORD_FILE=$TRADING_SECRETS_DIR/redis-read-region-$region.password"
        "READ_REGION_NATS_URL=$nats"
        "READ_REGION_JS_DOMAIN=$region"
        "READ_REGION_REDIS_URL=$redis"
    )
}

# start_read_region REGION ADDR LEAF_NATS_URL REDIS_URL METRICS_ADDR: the region's view of the hub's
# enriched stream, mirrored into its own leaf's JetStream domain (named after the region).
start_read_region() {
    local region=$1 addr=$2 nats=$3 redis=$4 metrics=$5
    edge_env READ_REGION_ "$metrics"
    # A region answers reads by the thousand a second: it keeps one read in READ_TRACE_RATIO
    # (default 1 %) of those that start a trace, and every span of a trace already sampled (an
    # order's projection continues the write region's trace, which keeps them all).
    if [[ ${TRACING:-off} == on ]]; then
        EDGE_ENV+=(
            "OTEL_TRACES_SAMPLER=parentbased_traceidratio"
            "OTEL_TRACES_SAMPLER_ARG=${READ_TRACE_RATIO:-0.01}"
        )
    fi
    read_region_env "$region" "$nats" "$redis"
    start_component "read-region-$region" "${addr%:*}" "${addr##*:}" 120 \
        grpc_serving "$addr" -- env "${EDGE_ENV[@]}" "${READ_ENV[@]}" \
        "READ_REGION_LISTEN_ADDR=$addr" "$SERVICE_BIN_DIR/read-region"
}
