# shellcheck shell=bash
# Sourced by infra/up after the infrastructure is up (skipped with --infra-only).
# lib.sh helpers are available (start_component, port_open, ...) and the
# variables of infra/.run/endpoints.env are exported.
# infra/down stops whatever start_component started here, before the infrastructure.

# The services run from a release build: they are what load tests measure.
SERVICE_BIN_DIR="$REPO_DIR/target/release"

grpc_serving() { "$SERVICE_BIN_DIR/grpc-health-probe" "$1" >/dev/null 2>&1; }

build_services() {
    log "building the services (cargo build --release; the first build takes minutes)"
    (cd "$REPO_DIR" && cargo build --release --locked -p write-region -p relay -p read-region -p platform --bins) ||
        die "services: cargo build failed"
}

start_services() {
    build_services
    # The write region reads its settings from WRITE_REGION_* variables.
    WRITE_REGION_LISTEN_ADDR="$WRITE_ADDR" \
        WRITE_REGION_NATS_URL="$NATS_HUB_URL" \
        WRITE_REGION_CASSANDRA_CONTACT_POINTS="[\"${CASSANDRA_CONTACT_POINTS}\"]" \
        start_component write-region "${WRITE_ADDR%:*}" "${WRITE_ADDR##*:}" 120 \
        grpc_serving "$WRITE_ADDR" -- "$SERVICE_BIN_DIR/write-region"
    RELAY_LISTEN_ADDR="$HUB_RELAY_ADDR" \
        RELAY_NATS_URL="$NATS_HUB_URL" \
        start_component relay "${HUB_RELAY_ADDR%:*}" "${HUB_RELAY_ADDR##*:}" 120 \
        grpc_serving "$HUB_RELAY_ADDR" -- "$SERVICE_BIN_DIR/relay"
    start_read_region eu "$READ_EU_ADDR" "$NATS_EU_URL" "$REDIS_EU_URL"
    start_read_region ap "$READ_AP_ADDR" "$NATS_AP_URL" "$REDIS_AP_URL"
}

# start_read_region REGION ADDR LEAF_NATS_URL REDIS_URL: the region's view of the hub's
# enriched stream, mirrored into its own leaf's JetStream domain (named after the region).
start_read_region() {
    local region=$1 addr=$2 nats=$3 redis=$4
    local key="$RUN_DIR/secrets/page-token-$region.key"
    # The key the region signs its page tokens with: generated here once, never committed or
    # logged, readable by this user only; it survives restarts so tokens clients hold do too.
    if [[ ! -s $key ]]; then
        (umask 077 && mkdir -p "$RUN_DIR/secrets" && head -c 32 /dev/urandom >"$key")
    fi
    READ_REGION_PAGE_TOKEN_KEY_FILE="$key" \
        READ_REGION_REGION="$region" \
        READ_REGION_LISTEN_ADDR="$addr" \
        READ_REGION_NATS_URL="$nats" \
        READ_REGION_JS_DOMAIN="$region" \
        READ_REGION_REDIS_URL="$redis" \
        start_component "read-region-$region" "${addr%:*}" "${addr##*:}" 120 \
        grpc_serving "$addr" -- "$SERVICE_BIN_DIR/read-region"
}
