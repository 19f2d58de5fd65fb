#!/usr/bin/env bash
# Switchover and failover timings on a real pair in two network namespaces
# (needs root, `ip netns` and PostgreSQL 15): runs tests/ha_switchover.rs,
# whose write load records every acknowledged commit, and prints its BENCH
# lines: per switchover the time during which no write succeeded against
# the clean stop of the primary plus pg_promote() measured in the same run
# (target: at most that sum + 1 s), the rows acknowledged and lost (must be
# 0), and the failover's time from the command's start to the first
# accepted write.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYFERRY_BENCH=1 cargo test --test ha_switchover -- --nocapture 2>&1 | grep -E '^BENCH|test result'
