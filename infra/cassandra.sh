# shellcheck shell=bash
# Cassandra for infra/up (one node) and infra/cluster (three nodes in two data centers):
# the JDK check, the jars from Maven Central, a node's configuration and its JVM command line.
# Sourced after lib.sh, never executed.

# An explicitly requested version is used as is; otherwise neighbouring 5.0.x
# releases are tried when 5.0.8 does not resolve.
[[ -n ${CASSANDRA_VERSION:-} ]] && CASSANDRA_VERSION_FORCED=1
CASSANDRA_VERSION="${CASSANDRA_VERSION:-5.0.8}"

check_java() {
    command -v java >/dev/null ||
        die "cassandra: java not found; Cassandra 5.0 needs a JDK 11 or 17 (apt-get install openjdk-17-jre-headless)"
    local v
    v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
    [[ $v == 11 || $v == 17 ]] || warn "cassandra: java $v found; Cassandra 5.0 supports 11 and 17 (flags here are for 17)"
}


CASSANDRA_HOME=""

fetch_cassandra() {
    local version=$1
    local home="$TRADING_CACHE/cassandra-$version"
    CASSANDRA_HOME=$home
    if [[ -f $home/.complete ]] && compgen -G "$home/lib/cassandra-all-*.jar" >/dev/null; then
        log "cassandra: $version jars cached in $home/lib"
        return 0
    fi
    command -v mvn >/dev/null || die "cassandra: mvn not found and jars not cached"
    step "cassandra: fetching org.apache.cassandra:cassandra-all:$version and dependencies from Maven Central (takes a minute or two the first time)"
    local t0=$SECONDS
    rm -rf "${home:?}/lib"
    mkdir -p "$home"
    # cassandra-all is a dependency of this pom, so copy-dependencies copies it
    # too, along with everything it needs at run time.
    CASSANDRA_VERSION=$version render pom.xml.in "$home/pom.xml"
    local rc=0
    (cd "$home" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
        -DoutputDirectory="$home/lib" -DincludeScope=runtime) \
        </dev/null >"$home/mvn.log" 2>&1 || rc=$?
    # Maven may complain about system-scoped JMC artifacts of cassandra-all's
    # pom; harmless as long as the jars we need arrived.
    if compgen -G "$home/lib/cassandra-all-$version.jar" >/dev/null &&
        (($(find "$home/lib" -name '*.jar' | wc -l) > 50)); then
        ((rc == 0)) || log "cassandra: mvn exited $rc but the jars are there (tolerated; see $home/mvn.log)"
        date -Is >"$home/.complete"
        log "cassandra: fetched $(find "$home/lib" -name '*.jar' | wc -l) jars in $((SECONDS - t0))s"
        return 0
    fi
    warn "cassandra: fetching $version failed (mvn exit $rc); last lines of $home/mvn.log:"
    tail -n 25 "$home/mvn.log" >&2
    return 1
}

ensure_cassandra_jars() {
    local v
    local -a versions=("$CASSANDRA_VERSION")
    # Fall back to neighbouring 5.0 releases only when no version was forced.
    [[ -n ${CASSANDRA_VERSION_FORCED:-} ]] || versions+=(5.0.7 5.0.6 5.0.9)
    for v in "${versions[@]}"; do
        if fetch_cassandra "$v"; then
            CASSANDRA_VERSION=$v
            return 0
        fi
        [[ ${#versions[@]} -gt 1 ]] && log "cassandra: trying the next 5.0.x version"
    done
    die "cassandra: could not download cassandra-all from Maven Central (refused or not found; see the mvn output above)"
}


# write_cassandra_config BASE: the node's directories under BASE and BASE/conf/cassandra.yaml,
# rendered from cassandra.yaml.in with the caller's CASSANDRA_CLUSTER_NAME, CASSANDRA_LISTEN,
# CASSANDRA_SEEDS, CASSANDRA_SNITCH, CASSANDRA_STORAGE_PORT and CASSANDRA_NATIVE_PORT.
write_cassandra_config() {
    local base=$1
    local conf="$base/conf"
    mkdir -p "$conf" "$base/data/data" "$base/data/commitlog" "$base/data/saved_caches" \
        "$base/data/hints" "$base/data/cdc_raw" "$base/logs"
    CASSANDRA_BASE=$base render cassandra.yaml.in "$conf/cassandra.yaml"
    # INFO to stdout, which the caller appends to the node's log.
    # Tools (infra/nodetool) log only warnings, to stderr.
    cp "$CONF_DIR/logback-tools.xml" "$CONF_DIR/logback.xml" "$conf/"
}

# cassandra_cmd BASE HEAP JMX_PORT: sets CASSANDRA_CMD to the JVM command line of the node whose
# configuration write_cassandra_config wrote under BASE.
cassandra_cmd() {
    local base=$1 heap=$2 jmx_port=$3
    CASSANDRA_CMD=(
        java
        -Xms"$heap" -Xmx"$heap"
        # GC settings of Cassandra 5.0's conf/jvm17-server.options ...
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
        -XX:G1HeapRegionSize=16m -XX:G1RSetUpdatingPauseTimePercent=5
        -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
        # ... and its JPMS flags (lib.sh).
        "${CASSANDRA_JPMS_FLAGS[@]}"
        # From jvm-server.options / cassandra-env.sh.
        -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$base" -XX:+ExitOnOutOfMemoryError
        -XX:+PerfDisableSharedMem
        -Djava.net.preferIPv4Stack=true
        # JMX only on loopback (cassandra.jmx.local.port binds 127.0.0.1), for nodetool; each
        # node of a cluster on one machine needs a port of its own.
        -Dcassandra.jmx.local.port="$jmx_port"
        -Dcassandra-foreground=yes
        -Dcassandra.config="file://$base/conf/cassandra.yaml"
        -Dcassandra.storagedir="$base/data"
        -Dcassandra.logdir="$base/logs"
        -Dlogback.configurationFile="$base/conf/logback.xml"
        -Dchronicle.analytics.disable=true
        # A new node or cluster: no ring to wait for before serving CQL.
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        -cp "$base/conf:$CASSANDRA_HOME/lib/*"
        org.apache.cassandra.service.CassandraDaemon
    )
}
