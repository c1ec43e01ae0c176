#!/usr/bin/env python3
"""Where a profiled process's CPU goes, by part of orderly (issue 18): reads `perf script -F comm,tid,ip,sym`
(call graphs) on stdin and prints a table of the parts' shares of the samples.

Each sample is given to the first part, walking its stack from the leaf to the root over user frames
(kernel frames are skipped: a syscall counts for the code that made it), whose pattern matches a frame;
so a memcmp under a skiplist search made by the store counts as the store's LSM work.
"""
import collections
import re
import sys

PARTS = [
    ("store: journal persist (fsync), group commit", r"Database::persist|fjall::journal|JournalSync"),
    ("store and bus: LSM reads and writes (memtables, trees)", r"crossbeam_skiplist|lsm_tree|fjall::|byteview"),
    ("JSON encode and decode (records, messages, HTTP bodies)", r"serde_json"),
    ("stock cache (LocalStockCache)", r"orderly_local::cache"),
    ("bus logic (LocalBus)", r"orderly_local::bus"),
    ("store logic (LocalStore)", r"orderly_local::store"),
    ("payments (ledger, simulated acquirer)", r"orderly_local::payments|orderly_ledger"),
    ("auth (HMAC tokens)", r"orderly_api::auth|hmac|sha2"),
    ("limits (rate rules, adaptive limit)", r"orderly_api::limit|orderly_api::adaptive|governor"),
    ("metrics", r"metrics_exporter|metrics::"),
    ("HTTP (hyper, axum)", r"hyper|axum|h1::|http::"),
    ("entry: pricing, split, ids", r"orderly_app::entry|orderly_domain|orderly_app::catalog|orderly_app::ids"),
    ("workers (create, pay, timeouts, relay)", r"orderly_app::workers"),
    ("HTTP: socket reads and writes (the kernel's loopback TCP)", r"mio::net::tcp"),
    ("tokio (scheduling, timers, I/O driver)", r"tokio::|mio::"),
]
PARTS = [(name, re.compile(pattern)) for name, pattern in PARTS]


def part_of(stack):
    for frame in stack:
        if frame.startswith("k:"):
            continue
        for name, pattern in PARTS:
            if pattern.search(frame):
                return name
    if stack and stack[0].startswith("k:"):
        return "other: kernel without a known caller"
    return "other: allocator, memcpy, std"


def main():
    counts = collections.Counter()
    stack, in_sample = [], False
    for line in sys.stdin:
        if not line.strip():
            if in_sample:
                counts[part_of(stack)] += 1
            stack, in_sample = [], False
            continue
        if not line.startswith("\t"):
            in_sample = True
            continue
        address, _, symbol = line.strip().partition(" ")
        stack.append(("k:" if address.startswith("ffffffff") else "") + symbol)
    if in_sample:
        counts[part_of(stack)] += 1
    total = sum(counts.values()) or 1
    print("| part | share of the server's CPU samples |")
    print("|---|---|")
    for name, count in counts.most_common():
        print(f"| {name} | {100 * count / total:.1f} % |")
    print(f"\n{total} samples")


if __name__ == "__main__":
    main()
