#!/usr/bin/env bash
# Checks the Grafana dashboard's PromQL against a real Prometheus.
#
#   bash ops/check-dashboard.sh
#
# 1. Installs Prometheus and promtool (Debian's `prometheus` package) and jq if missing.
# 2. `promtool check config ops/prometheus.yml`.
# 3. Builds and starts a real `sonde server` and the demo shop (`examples/shop.rs`) on free
#    loopback ports, a temp data dir; creates two tracepoints on the shop's probe lines (a latency
#    histogram and a counter) and drives traffic: checkouts, product lookups, HTTP polls, a 404.
# 4. Starts Prometheus on 127.0.0.1 (a free port, a temp storage dir) with ops/prometheus.yml's
#    jobs pointed at those ports, scraping every second; waits for scrapes of both targets.
# 5. Evaluates every panel query of ops/grafana/sonde-dashboard.json through `/api/v1/query`
#    (Grafana's `$__rate_interval` replaced by 30s) and fails if any query errors. An empty result
#    is reported and accepted (a metric with no data yet), except for the server's own polls and
#    HTTP metrics, which the traffic above must have produced.
#
# SKIP_BUILD=1 uses the release binaries already in target/ instead of building them.
#
# Not part of CI (it installs packages, builds in release mode and runs three services). Bounded
# in time: the build by BUILD_TIMEOUT (default 900 s), every wait by a deadline; everything it
# starts is stopped on exit.

set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CONFIG=ops/prometheus.yml
DASHBOARD=ops/grafana/sonde-dashboard.json
BUILD_TIMEOUT=${BUILD_TIMEOUT:-900}
RATE_INTERVAL=30s

say() { printf 'check-dashboard: %s\n' "$*"; }
die() {
    printf 'check-dashboard: FAIL: %s\n' "$*" >&2
    exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sonde-dashboard.XXXXXX")
PIDS=()
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        for log in "$WORK"/*.log; do
            [[ -f $log ]] || continue
            printf -- '--- last lines of %s\n' "$(basename "$log")" >&2
            tail -n 15 "$log" >&2
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. tools -----------------------------------------------------------------------------------
need_apt=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
command -v jq >/dev/null || need_apt+=(jq)
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing ${need_apt[*]}: run as root or 'apt-get install -y ${need_apt[*]}'"
    say "installing ${need_apt[*]} (Debian packages)"
    apt-get update -qq
    # RUNLEVEL=1: the package's maintainer scripts must not start a system-wide Prometheus.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
say "$(prometheus --version 2>&1 | head -n 1)"

# --- 2. the configuration -------------------------------------------------------------------------
promtool check config "$CONFIG"

# --- 3. the server and the shop ------------------------------------------------------------------
if [[ ${SKIP_BUILD:-} == 1 && -x target/release/sonde && -x target/release/examples/shop ]]; then
    say "SKIP_BUILD=1: using the existing target/release/sonde and target/release/examples/shop"
else
    say "building sonde and the shop example (release)"
    timeout "$BUILD_TIMEOUT" cargo build --release --quiet --bin sonde --example shop ||
        die "cargo build failed or took more than ${BUILD_TIMEOUT}s"
fi

# Waits up to $2 seconds for a line matching $3 (an extended regex) in file $1; prints its first
# match.
wait_for_line() {
    local file=$1 secs=$2 pattern=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        if grep -Eo "$pattern" "$file" 2>/dev/null | head -n 1 | grep .; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

target/release/sonde server --listen 127.0.0.1 --grpc-port 0 --http-port 0 \
    --data-dir "$WORK/sonde-data" >"$WORK/server.log" 2>&1 &
PIDS+=($!)
GRPC=$(wait_for_line "$WORK/server.log" 20 'grpc listening on [0-9.:]+' | awk '{print $4}') ||
    die "the server did not start"
HTTP=$(wait_for_line "$WORK/server.log" 5 'http listening on [0-9.:]+' | awk '{print $4}') ||
    die "the server did not print its HTTP address"
say "sonde server: grpc $GRPC, http $HTTP"

# Poll mode, twice a second: gRPC polls (and their latency) as well as the HTTP ones below.
SONDE_AGENT_SERVER="http://$GRPC" SONDE_AGENT_MODE=poll SONDE_AGENT_POLL_INTERVAL_MS=500 RUST_LOG=warn \
    target/release/examples/shop --listen 127.0.0.1:0 >"$WORK/shop.log" 2>&1 &
PIDS+=($!)
SHOP=$(wait_for_line "$WORK/shop.log" 20 'listening on http://[0-9.:]+' | sed 's|.*http://||') ||
    die "the shop did not start"
say "shop: http $SHOP"

# The shop prints its probe sites as `FILE:LINE   captures NAMES`.
site_of() { grep -E "captures $1\$" "$WORK/shop.log" | awk '{print $1}'; }
CHECKOUT_SITE=$(site_of 'order, discount, charged, took')
PRODUCT_SITE=$(site_of 'id, found, name, price')
[[ -n $CHECKOUT_SITE && -n $PRODUCT_SITE ]] || die "the shop did not list its probe sites"

create_tracepoint() {
    curl -fsS "http://$HTTP/api/tracepoints" -H 'content-type: application/json' -d "$1" |
        jq -r '.tracepoint.ID'
}
TP1=$(create_tracepoint "$(jq -n --arg path "${CHECKOUT_SITE%:*}" --argjson line "${CHECKOUT_SITE##*:}" '
    {tracepoint: {path: $path, line_number: $line,
      targeting: [{key: "service.name", value: {stringValue: "shop"}}],
      metrics: [{name: "checkout_latency", unit: "seconds", type: "HISTOGRAM", expression: "took",
                 labelExpressions: [{key: "country", expression: "order.country"}]}]}}')") ||
    die "creating the checkout tracepoint"
TP2=$(create_tracepoint "$(jq -n --arg path "${PRODUCT_SITE%:*}" --argjson line "${PRODUCT_SITE##*:}" '
    {tracepoint: {path: $path, line_number: $line,
      targeting: [{key: "service.name", value: {stringValue: "shop"}}],
      metrics: [{name: "product_views", type: "COUNTER",
                 labelExpressions: [{key: "found", expression: "found"}]}]}}')") ||
    die "creating the product tracepoint"
say "tracepoints: $TP1 at $CHECKOUT_SITE (histogram), $TP2 at $PRODUCT_SITE (counter)"

# Traffic, until the script ends: the shop's routes, the server's API (HTTP polls, listings,
# a 404), and, through the shop's agent, gRPC polls and status reports.
traffic() {
    local i=0 country
    while :; do
        country=$([[ $((i % 3)) -eq 0 ]] && echo NZ || echo FR)
        curl -s -o /dev/null -XPOST "http://$SHOP/checkout" -H 'content-type: application/json' \
            -d "{\"country\":\"$country\",\"items\":[{\"sku\":\"tea\",\"qty\":2}],\"total\":$((10 + i % 90)),\"user\":{\"id\":\"u$i\",\"tier\":\"gold\"}}"
        curl -s -o /dev/null "http://$SHOP/products/$((i % 5))"
        curl -s -o /dev/null "http://$HTTP/api/tracepoints?service.name=shop"
        curl -s -o /dev/null "http://$HTTP/api/agents"
        curl -s -o /dev/null "http://$HTTP/api/tracepoints/no-such-id"
        i=$((i + 1))
        sleep 0.1
    done
}
traffic >/dev/null 2>&1 &
PIDS+=($!)

# --- 4. Prometheus ----------------------------------------------------------------------------------
PROM_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PROM="127.0.0.1:$PROM_PORT"
# ops/prometheus.yml with its targets moved to the ports started above, scraped every second.
sed -e "s/127\.0\.0\.1:3300/$HTTP/" -e "s/127\.0\.0\.1:8080/$SHOP/" \
    -e 's/scrape_interval: .*/scrape_interval: 1s/' "$CONFIG" >"$WORK/prometheus.yml"
promtool check config "$WORK/prometheus.yml" >/dev/null || die "the rewritten configuration"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="$PROM" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
for ((i = 0; i < 300; i++)); do
    curl -fs "http://$PROM/-/ready" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "http://$PROM/-/ready" >/dev/null || die "Prometheus did not become ready on $PROM"
say "prometheus: http://$PROM"

# One instant query; prints Prometheus' JSON answer.
query() { curl -sS --max-time 10 "http://$PROM/api/v1/query" --data-urlencode "query=$1"; }

# Enough scrapes for a rate over $RATE_INTERVAL: both targets up, at least 8 samples each.
for ((i = 0; i < 60; i++)); do
    ready=$(query "count(count_over_time(up[1m]) >= 8 and up == 1)" | jq -r '.data.result[0].value[1] // 0')
    [[ $ready == 2 ]] && break
    sleep 1
done
[[ $ready == 2 ]] || die "the targets were not scraped (see $WORK/prometheus.yml): $(query up)"
say "both targets scraped (up == 1, 8+ samples each)"

# --- 5. every panel's queries ------------------------------------------------------------------------
# Metrics that must have data: the server's own polls and HTTP latency.
MUST_HAVE_DATA='sonde_server_polls_total|sonde_server_http_request_duration_seconds'
failures=0
empty=0
total=0
while IFS=$'\t' read -r title ref expr; do
    total=$((total + 1))
    promql=${expr//\$__rate_interval/$RATE_INTERVAL}
    promql=${promql//\$__interval/5s}
    promql=${promql//\$__range/5m}
    answer=$(query "$promql") || answer='{"status":"error","error":"no answer from Prometheus"}'
    status=$(jq -r '.status' <<<"$answer" 2>/dev/null || echo "unparsable")
    if [[ $status != success ]]; then
        printf '  ERROR  %-44s %s  %s\n         %s\n' "$title" "$ref" "$expr" \
            "$(jq -r '.error // .' <<<"$answer" 2>/dev/null || echo "$answer")"
        failures=$((failures + 1))
        continue
    fi
    n=$(jq '.data.result | length' <<<"$answer")
    if ((n == 0)); then
        if [[ $expr =~ $MUST_HAVE_DATA ]]; then
            printf '  NODATA %-44s %s  %s  (must have data)\n' "$title" "$ref" "$expr"
            failures=$((failures + 1))
        else
            printf '  empty  %-44s %s  %s\n' "$title" "$ref" "$expr"
            empty=$((empty + 1))
        fi
        continue
    fi
    sample=$(jq -r '.data.result[0] | "{\(.metric | to_entries | map("\(.key)=\(.value)") | join(","))} \(.value[1])"' <<<"$answer")
    printf '  ok     %-44s %s  %d series, e.g. %s\n' "$title" "$ref" "$n" "$sample"
done < <(jq -r '.panels[] | select(.targets) | .title as $t | .targets[] | [$t, .refId, .expr] | @tsv' "$DASHBOARD")

say "$total queries: $((total - failures - empty)) with data, $empty empty (no data yet), $failures failed"
((total > 0)) || die "no queries found in $DASHBOARD"
((failures == 0)) || die "$failures queries failed"
say "ok"
