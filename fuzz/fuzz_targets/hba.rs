//! The `pg_hba.conf` tokenizer and editor, on arbitrary bytes.
//!
//! Invariants checked:
//! - `tokenize`, `managed_blocks`, `ensure` and `remove` never panic or hang
//!   on any input;
//! - for any file where `ensure` succeeds and that has no block for the
//!   peer yet, `remove(ensure(x)) == x` byte for byte;
//! - `ensure` is idempotent: ensuring again changes nothing;
//! - after `ensure` the file holds a current block for the peer, and the
//!   tokenizer sees every line of it.
#![no_main]

use keyferry::ha::hba::{self, HbaMethod};
use keyferry::ha::PeerAddr;
use libfuzzer_sys::fuzz_target;

const PEERS: [&str; 4] = ["10.20.30.41", "192.168.7.2", "fd00::17", "2001:db8::1"];
const USERS: [&str; 2] = ["repuser", "replication_user"];

fuzz_target!(|input: &[u8]| {
    // The last byte (if any) picks peer, user and method; the rest is the file.
    let (selector, text) = match input.split_last() {
        Some((s, rest)) => (*s, rest),
        None => (0, input),
    };
    let peer: PeerAddr = PEERS[usize::from(selector & 3)].parse().unwrap();
    let repuser = USERS[usize::from((selector >> 2) & 1)];
    let method = if selector & 8 == 0 {
        HbaMethod::ScramSha256
    } else {
        HbaMethod::Md5
    };

    let _ = hba::tokenize(text);
    let Ok(blocks) = hba::managed_blocks(text) else {
        return;
    };
    let had_block = blocks.iter().any(|b| b.peer == peer.ip());

    let Ok(added) = hba::ensure(text, &peer, repuser, method) else {
        return;
    };
    let again = hba::ensure(&added.text, &peer, repuser, method).expect("ensure twice");
    assert!(!again.changed, "ensure is not idempotent");
    assert_eq!(again.text, added.text);

    let after = hba::managed_blocks(&added.text).expect("ensure output scans");
    let block = after
        .iter()
        .find(|b| b.peer == peer.ip())
        .expect("ensure wrote a block");
    assert!(block.is_current(repuser, method), "block not current");

    let removed = hba::remove(&added.text, &peer).expect("remove after ensure");
    if !had_block {
        assert_eq!(removed.text, text, "remove(ensure(x)) != x");
    }
});
