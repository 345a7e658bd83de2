# shellcheck shell=bash
# Sourced by infra/up after the infrastructure is up (skipped with --infra-only).
# lib.sh helpers are available (start_component, port_open, ...) and the
# variables of infra/.run/endpoints.env are exported.
# Example:
#   start_component write-region 127.0.0.1 50051 60 port_open 127.0.0.1 50051 \
#       -- "$REPO_DIR/target/debug/write-region"
# infra/down stops whatever start_component started here, before the infrastructure.

start_services() {
    : # The Rust services (write-region, read-region eu/ap) are added here.
}
