# The fuzz targets and how each is run; sourced by fuzz/smoke.sh and
# fuzz/plateau.sh so that CI and long runs feed the same corpora.
# shellcheck shell=bash

targets=(bundle_open armor payload_zip documents hba stream_damage envelope distribution)

# Read-only extra corpora: the independent test vectors and pg_hba samples.
extra_dirs() {
    case "$1" in
        bundle_open | payload_zip) echo tests/vectors/independent ;;
        documents) echo tests/vectors/independent tests/vectors/documents ;;
        hba) echo tests/vectors/hba tests/vectors/hba/regressions ;;
        distribution) echo tests/vectors/v2 ;;
        *) ;;
    esac
}

extra_flags() {
    case "$1" in
        # The vector folder holds 128 KiB bundles; documents are small.
        documents) echo -max_len=16384 -dict=fuzz/documents.dict ;;
        *) ;;
    esac
}
